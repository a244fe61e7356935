"""Generation by B under injection of A's states: token-level, KV-cached, with Hugging Face's sampling controls.

    >>> sp = stitch.Splice(A, B, source_layer=8)
    >>> sp.generate(["The capital of France is"], max_new_tokens=8, policy="restitch")      # -> [str]
    >>> out = sp.generate(prompts, do_sample=True, top_p=0.9, seed=0, return_ids=True)      # GenerationOutput
    >>> out.texts, out.token_ids, out.scores

B's generated token ids are the state; the text is derived from them once (`stitch.splice.tokens`), so a
sentencepiece `▁the` keeps its space and a character cut into byte tokens is never lost. Policies
("prompt", "restitch" alias "all") are strategies in `stitch.splice.policies`, which says what every
position attends to. `use_cache=False` runs the reference path: every step recomputed from scratch by
re-encoding A's text, which the cached path equals token for token (tests/test_generation.py).

Controls follow `transformers.GenerationMixin.generate`: greedy unless `do_sample`; `temperature`, `top_k`,
`top_p` through transformers' own logits warpers; `seed` fixes the draws; a row stops at `eos_token_id`
(default: the tokenizer's EOS; `[]` or `stop_at_eos=False` never) or once its text contains one of
`stop_strings` (kept in the text, as HF keeps it); `streamer` receives `put(ids)` / `end()` like
`transformers.TextStreamer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from stitch.checks import check_texts
from stitch.config import Config
from stitch.splice.policies import POLICIES, policy_for
from stitch.splice.rows import Rows


@dataclass(frozen=True)
class GenerationConfig(Config):
    """What to generate and how; validated at construction (errors name the field, value and range)."""

    max_new_tokens: int = 32
    policy: str = "prompt"
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    eos_token_id: tuple[int, ...] = ()
    use_cache: bool = True

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        policy_for(self.policy)
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"do_sample: expected True or False, got {self.do_sample!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {self.temperature!r}")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 0)
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        for i, s in enumerate(self.stop_strings):
            if not isinstance(s, str) or s == "":
                raise ValueError(f"stop_strings[{i}]: expected a non-empty string, got {s!r}")
        for i, t in enumerate(self.eos_token_id):
            _check_int(f"eos_token_id[{i}]", t, 0)


@dataclass
class GenerationOutput:
    """What `generate(..., return_ids=True)` returns; `scores` / `logits` only with `output_scores=True`.

    `token_ids[r]`: B's generated ids (the stopping token included); `scores[t]`: `[batch, vocab]` processed
    scores of step t (what was sampled from, HF's `output_scores`), `logits[t]` the raw ones; `stopped[r]`:
    why row r ended, "eos", "stop_string" or "length".
    """

    texts: list[str]
    token_ids: list[list[int]]
    prompt_ids: list[list[int]]
    stopped: list[str]
    scores: list[Tensor] | None = None
    logits: list[Tensor] | None = None


@dataclass
class _Run:
    config: GenerationConfig
    rows: Rows
    processors: LogitsProcessorList
    generator: torch.Generator | None
    stopped: list[str | None]
    scores: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)


def generate(splice, prompts, config: GenerationConfig, *, streamer=None, output_scores: bool = False, policy=None):
    """B's continuations of `prompts` under the splice, as a GenerationOutput (see the module docstring).

    `policy` (a `Policy` class) overrides `config.policy`'s: activation communication brings its own.
    Runs under `torch.inference_mode` (no autograd bookkeeping on the many small ops of a cached step, the
    cached path and the reference alike); the scores returned are cloned out of it, ordinary tensors."""
    with torch.inference_mode():
        out = _generate(splice, prompts, config, streamer, output_scores, policy)
    if out.scores is not None:
        out.scores, out.logits = [s.clone() for s in out.scores], [x.clone() for x in out.logits]
    return out


def _generate(splice, prompts, config: GenerationConfig, streamer, output_scores: bool, policy) -> GenerationOutput:
    prompts = check_texts(prompts)
    if splice.alignment != "target":
        raise ValueError("alignment: generation needs alignment='target' (B predicts its own next tokens)")
    rows = Rows.start(splice.B, prompts)
    _check_room(splice.B, rows, config.max_new_tokens)
    policy = (policy or policy_for(config.policy))(splice, rows)
    run = _Run(config, rows, _processors(config), _generator(config, splice.B.output_device), [None] * len(prompts))
    if streamer is not None:
        streamer.put(rows.target.input_ids.cpu())
    logits = policy.start() if config.use_cache else policy.reference()
    for step in range(config.max_new_tokens):
        tokens = _choose(run, logits, output_scores)
        _take(run, tokens, last=step == config.max_new_tokens - 1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        if not any(rows.alive):
            break
        logits = policy.advance() if config.use_cache else policy.reference()
    if streamer is not None:
        streamer.end()
    return _output(run, output_scores)


def _choose(run: _Run, logits: Tensor, keep: bool) -> Tensor:
    # The warpers used here read scores only; no ids are passed.
    none = torch.empty(len(run.rows), 0, dtype=torch.long, device=logits.device)
    scores = run.processors(none, logits.float())
    if keep:
        run.scores.append(scores)
        run.logits.append(logits.float())
    if not run.config.do_sample:
        return scores.argmax(-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=run.generator).squeeze(-1)


def _take(run: _Run, tokens: Tensor, last: bool) -> None:
    """Append each live row's token, then retire rows that hit EOS, a stop string, or the length limit."""
    rows, config = run.rows, run.config
    before = [len(row.text) for row in rows.rows]
    rows.append(tokens.tolist())
    for r, row in enumerate(rows.rows):
        if not rows.alive[r]:
            continue
        if row.ids[-1] in config.eos_token_id:
            run.stopped[r] = "eos"
        elif config.stop_strings and _has_stop(row, before[r], config.stop_strings):
            run.stopped[r] = "stop_string"
        elif last:
            run.stopped[r] = "length"
        rows.alive[r] = run.stopped[r] is None


def _has_stop(row, before: int, stops: tuple[str, ...]) -> bool:
    # Only the generated text that could hold a stop string completed by the new characters is searched
    # (`before`: the row's text length before this step), so the check costs O(new), not O(text).
    return any(s in row.text[max(row.prompt_chars, before - len(s) + 1) :] for s in stops)


def _output(run: _Run, output_scores: bool) -> GenerationOutput:
    rows = run.rows.rows
    return GenerationOutput(
        [row.final_text() for row in rows],
        [row.generated_ids() for row in rows],
        [row.ids[: row.prompt_len] for row in rows],
        [s or "length" for s in run.stopped],
        run.scores if output_scores else None,
        run.logits if output_scores else None,
    )


def _processors(config: GenerationConfig) -> LogitsProcessorList:
    """transformers' own warpers, in the order `generate` applies them (none when greedy)."""
    procs = LogitsProcessorList()
    if not config.do_sample:
        return procs
    if config.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(float(config.temperature)))
    if config.top_k:
        procs.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        procs.append(TopPLogitsWarper(float(config.top_p)))
    return procs


def _generator(config: GenerationConfig, device) -> torch.Generator | None:
    if config.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(config.seed)


def _check_room(B, rows: Rows, max_new_tokens: int) -> None:
    if B.n_ctx is None:
        return
    for r, row in enumerate(rows.rows):
        if row.prompt_len + max_new_tokens > B.n_ctx:
            raise ValueError(
                f"max_new_tokens: prompt {r} has {row.prompt_len} tokens of B, and {row.prompt_len} + "
                f"{max_new_tokens} exceeds B's {B.n_ctx} positions (valid: max_new_tokens <= "
                f"{B.n_ctx - row.prompt_len} for this prompt)"
            )


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def resolve_eos(tokenizer, eos_token_id, stop_at_eos: bool) -> tuple[int, ...]:
    """EOS ids to stop at: given ids, else the tokenizer's EOS; none when `stop_at_eos` is False."""
    if not stop_at_eos:
        return ()
    if eos_token_id is None:
        return () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    return (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)


def config_from(max_new_tokens, policy, **controls) -> GenerationConfig:
    """A GenerationConfig from keyword controls; stop strings as a tuple (a lone string is one stop string)."""
    stops = controls.pop("stop_strings", None) or ()
    controls["stop_strings"] = (stops,) if isinstance(stops, str) else tuple(stops)
    return GenerationConfig(max_new_tokens=max_new_tokens, policy=policy, **controls)


__all__ = ["POLICIES", "GenerationConfig", "GenerationOutput", "config_from", "generate", "resolve_eos"]
