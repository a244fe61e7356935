"""Generation samples at each evaluation: B's greedy continuations under the splice, on fixed held-out openings.

    >>> prompts = sample_prompts(eval_texts, n=3)          # the openings of the first 3 held-out texts
    >>> generation_samples(sp, prompts, max_new_tokens=16)
    [{"prompt": "The cat sat", "continuation": " on the mat"}, ...]

The prompts are fixed for the whole run (the first `n` held-out texts, each cut to its opening), so the
samples of successive evaluations show the same prompts under a changing adapter. Decoding is greedy
(`Splice.generate`, `do_sample=False`): a sample changes only when the adapter does.
"""

from __future__ import annotations

import torch

PROMPT_CHARS = 80  # an opening: at most this many characters, and at most half of the text


def sample_prompts(texts: list[str], n: int, max_chars: int = PROMPT_CHARS) -> list[str]:
    """The openings of the first `n` texts: at most half of each (and `max_chars`), cut before its last space if any."""
    prompts = []
    for text in texts[:n]:
        head = text[: max(1, min(max_chars, len(text) // 2))]
        cut = head.rfind(" ")  # the prompt ends before a space: B continues with a word of its own
        prompts.append(head[:cut] if cut > 0 else head)
    return prompts


@torch.no_grad()
def generation_samples(sp, prompts: list[str], max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy continuations of `prompts` under the splice `sp`, one {"prompt", "continuation"} per prompt."""
    continuations = sp.generate(prompts, max_new_tokens=max_new_tokens, do_sample=False)
    return [{"prompt": p, "continuation": c} for p, c in zip(prompts, continuations, strict=True)]
