"""Greedy generation by B under injection of A's states.

    >>> sp = stitch.Splice(A, B, source_layer=8)
    >>> sp.generate(["The capital of France is"], max_new_tokens=8, policy="all")

Policies (each step re-encodes prompt + continuation for both models, so no KV cache is reused):
- "all": every B position, generated ones included, gets A's aligned state at layer M; B never reads the
  text itself below layer M. The clean test of whether B can read A.
- "prompt": only positions inside the prompt get A's states; generated tokens are B-native, and below
  layer M they attend to B's own reading of the whole text (prompt included), as an nnsight-style
  intervention on prompt positions would. Useful as a comparison, not as evidence that B read A.

Because each step re-encodes text, a continuation is text, not B's token ids: a byte piece of a
multi-byte character decodes to "\ufffd", and a special token other than EOS is dropped from the text.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from torch import Tensor

from stitch.checks import check_choice, check_texts

POLICIES = ("all", "prompt")


@torch.no_grad()
def generate(
    splice, prompts, max_new_tokens: int = 32, policy: str = "prompt", stop_at_eos: bool = True
) -> list[str]:
    """Continuations (text only, prompt excluded) that B generates greedily under the splice."""
    prompts = check_texts(prompts)
    check_choice("policy", policy, POLICIES)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens!r}")
    if splice.alignment != "target":
        raise ValueError("alignment: generation needs alignment='target' (B predicts its own next tokens)")
    tok = splice.B.tokenizer
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        texts = [p + tok.decode(g, skip_special_tokens=True) for p, g in zip(prompts, generated, strict=True)]
        for row, token in enumerate(_next_tokens(splice, texts, prompts, policy)):
            if not done[row]:
                generated[row].append(token)
                done[row] = stop_at_eos and token == tok.eos_token_id
        if all(done):
            break
    return [tok.decode(g, skip_special_tokens=True) for g in generated]


def _next_tokens(splice, texts: list[str], prompts: list[str], policy: str) -> list[int]:
    aligned = splice.align(texts)
    states = splice.A.residuals(aligned.source, [splice.source_layer])[splice.source_layer]
    mapped = splice.map_states(states, aligned)
    target = aligned.target
    if policy == "prompt":
        own = _own_states(splice, target)
        beyond = _beyond_prompt(target, prompts).unsqueeze(-1)
        mapped = torch.where(beyond, own.to(mapped.dtype), mapped)
    logits = splice.target_logits(mapped, target)
    last = target.attention_mask.long().cumsum(-1).argmax(-1)  # index of each row's last real token
    return logits[torch.arange(len(texts)), last].argmax(-1).tolist()


def _own_states(splice, target) -> Tensor:
    """B's own states where the splice writes: layer M, or its input embeddings for `inputs_embeds`."""
    return splice.strategy.own_states(splice.B, target, splice.target_layer)


def _beyond_prompt(batch, prompts: list[str]) -> Bool[Tensor, "batch pos"]:
    """B tokens that end after the prompt's last byte (the generated part of each text)."""
    limits = torch.tensor([len(p.encode("utf-8")) for p in prompts], device=batch.device)
    spans = batch.byte_spans if batch.byte_spans is not None else batch.spans
    return (spans[..., 1] > limits[:, None]) & batch.attention_mask.bool()
