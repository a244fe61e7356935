"""Activation communication (Ramesh & Li, ICML 2025): B's prompt positions read A's states of another prompt.

    >>> out = stitch.communicate(A, B, ["Alice was born in Paris."], ["Where was Alice born?"], k=6, j=6)
    >>> out.texts                                        # B's continuations
    >>> stitch.communicate(A, B, pa, pb, 6, 6, combine="mean", positions=[-1, -2], source_positions=[-1, -1])
    >>> stitch.communicate(A, B, pa, pb, 6, 6, control="random", seed=0)      # matched-norm random vector
    >>> stitch.communicate(A, B, pa, pb, 6, 6, inject="generated")            # also every generated token

A reads `prompts_a` up to layer k; the states at `source_positions` (token indices among each prompt's real
tokens, -1 = last; "last" by default) go through `adapter` (identity when widths match; a `Projection`, a
closed-form fit on paired text with `stitch.fit_adapter`, or a trained one otherwise) and are combined
(`replace`, `sum`, `mean`: `stitch.splice.combine`) with B's own residual stream at layer j at `positions` of
`prompts_b` (paired one to one with `source_positions`). B runs all its blocks on its own prompt and generates
with every control of `Splice.generate` (sampling, stop strings, streamer, `use_cache=False` reference).
A and B may live on different devices: only A's picked states cross, once per prompt pass, to B's device at
layer j in the adapter's dtype, and the adapter runs there (moved in place, as `stitch.Splice` does;
`stitch.models.placement.record_moves` shows the move).

`inject`: "prompt" writes on the prompt pass only (generated tokens are B's own); "generated" also writes A's
last communicated state at every generated token. `control`: "activation" (the communication), "random" (a
Gaussian direction with the norm of B's own state it replaces, at the same positions; `random_norm="mapped"`
matches A's mapped state instead) or "none" (B alone on `prompts_b`: equal to HF `generate`). The text controls
(B with A's prompt or generated text as context) are text-only and live in `analyses.communication`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stitch.checks import check_choice, check_layer, check_texts
from stitch.models.hooked import HookedLM
from stitch.models.placement import adapter_dtype, adapter_on, transfer
from stitch.splice.combine import Write, combine_for
from stitch.splice.generate import config_from, generate, resolve_eos
from stitch.splice.injection import injection_for
from stitch.splice.policies import Prompt, left_batch, on_full_grid
from stitch.splice.splice import _checked_adapter

INJECT = ("prompt", "generated")
CONTROLS = ("activation", "random", "none")
RANDOM_NORMS = ("own", "mapped")


@dataclass(eq=False)
class Communication:
    """What generation needs of a communication (the generation loop and policies read these fields)."""

    A: HookedLM
    B: HookedLM
    prompts_a: list[str]
    k: int
    target_layer: int
    combine: object
    adapter: nn.Module
    positions: tuple[int, ...]
    source_positions: tuple[int, ...]
    inject: str = "prompt"
    control: str = "activation"
    random_norm: str = "own"
    seed: int = 0
    alignment: str = "target"  # B predicts its own next tokens

    def __post_init__(self):
        self.strategy = injection_for("residual")

    @property
    def write_device(self) -> torch.device:
        """Where B's stream enters layer j: A's picked states cross there once, and the adapter runs there."""
        return self.B.device_of(self.target_layer)


def _indices(name: str, value) -> tuple[int, ...]:
    if value == "last":
        return (-1,)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or \
            any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise ValueError(f"{name}: got {value!r}; valid: 'last', a token index, or a non-empty list of indices")
    return tuple(value)


def _pairs(positions, source_positions) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """B indices and the A index each reads: a {b_index: a_index} mapping, or two lists of one length."""
    if isinstance(positions, dict):
        if source_positions != "last":
            raise ValueError("source_positions: give either a positions mapping {b: a} or source_positions")
        return _indices("positions", list(positions)), _indices("positions (values)", list(positions.values()))
    b, a = _indices("positions", positions), _indices("source_positions", source_positions)
    if len(a) == 1 and len(b) > 1:
        a = a * len(b)
    if len(a) != len(b):
        raise ValueError(f"source_positions: {len(a)} indices for {len(b)} positions; give one, or one per position")
    return b, a


def _gather(batch, indices: tuple[int, ...], name: str) -> tuple[Tensor, Tensor]:
    """(rows, columns) of each row's token at each index (negative: from the end), in index order."""
    n = batch.attention_mask.sum(-1)
    cols = []
    for i in indices:
        if (i >= 0 and (n <= i).any()) or (i < 0 and (n < -i).any()):
            raise ValueError(f"{name}: index {i} is beyond a prompt of {int(n.min())} tokens")
        pos = torch.where(torch.tensor(i >= 0), torch.full_like(n, i), n + i)
        cols.append(batch.shape[1] - n + pos if batch.padding_side == "left" else pos)
    cols = torch.stack(cols, 1)
    rows = torch.arange(len(n), device=cols.device).unsqueeze(1).expand_as(cols)
    return rows, cols


class Communicate(Prompt):
    """The prompt policy with A's states of its own prompt written at B's chosen prompt positions."""

    def __init__(self, comm: Communication, rows):
        self.splice, self.rows, self.A, self.B = comm, rows, comm.A, comm.B
        self.comm = comm

    def prompt_write(self) -> tuple[Tensor, Write]:
        comm, target, device = self.comm, self.rows.target, self.comm.write_device
        rows_b, cols_b = (t.to(device) for t in _gather(target, comm.positions, "positions"))
        mapped = torch.zeros(*target.shape, self.B.d_model, device=device)
        selected = torch.zeros(target.shape, dtype=torch.bool, device=device)
        if comm.control == "none":
            return mapped, Write(comm.combine, selected)
        vectors = self.vectors()
        if comm.control == "random":
            vectors = self.random_like(vectors, rows_b, cols_b)
        mapped[rows_b, cols_b] = vectors.to(mapped.dtype)
        selected[rows_b, cols_b] = True
        self.last_vector = vectors[:, -1]
        return mapped, Write(comm.combine, selected)

    def vectors(self) -> Tensor:
        """A's states at the source positions, through the adapter: [batch, n_positions, d_B]. Only the
        picked states cross to B's device (once, in the adapter's dtype); the adapter runs on B's side."""
        source = self.A.encode(self.comm.prompts_a, padding_side="left")
        states = self.A.residuals(source, [self.comm.k])[self.comm.k]
        rows, cols = _gather(source, self.comm.source_positions, "source_positions")
        picked = states[rows.to(states.device), cols.to(states.device)]
        dtype = adapter_dtype(self.comm.adapter, picked)
        return self.comm.adapter(transfer(picked, self.comm.write_device, dtype)).to(self.B.dtype)

    def random_like(self, vectors: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Gaussian directions scaled to the norm of B's own state there (or of A's mapped state)."""
        if self.comm.random_norm == "own":
            own = self.B.residuals(self.rows.target, [self.comm.target_layer])[self.comm.target_layer]
            reference = own[rows.to(own.device), cols.to(own.device)].to(vectors.device)
        else:
            reference = vectors
        g = torch.Generator(device="cpu").manual_seed(self.comm.seed)
        direction = torch.randn(vectors.shape, generator=g).to(vectors.device, vectors.dtype)
        return direction / direction.norm(dim=-1, keepdim=True) * reference.norm(dim=-1, keepdim=True)

    def advance(self) -> Tensor:
        if self.comm.inject == "prompt" or self.comm.control == "none":
            return super().advance()
        step = self.rows.last_token_step()
        vec = self.last_vector.unsqueeze(1)
        return self.splice.strategy.run_cached(self.B, vec, self.kv, step, self.comm.target_layer,
                                               Write(self.comm.combine, None), below=True)

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        mapped, write = self.prompt_write()
        full, full_write = on_full_grid(batch, self.rows.target, mapped, write)
        if self.comm.inject == "generated" and self.comm.control != "none":
            generated = batch.attention_mask.bool() & ~_prompt_mask(batch, self.rows.target)
            full = torch.where(generated.unsqueeze(-1), self.last_vector.unsqueeze(1).to(full.dtype), full)
            full_write = Write(write.combine, full_write.selected | generated)
        return self.splice.strategy.run(self.B, full, batch, self.comm.target_layer, full_write)[:, -1]


def _prompt_mask(batch, prompt) -> Tensor:
    """The prompt's columns in `batch` (both left-padded): B's tokens before the generated ones."""
    start = batch.shape[1] - batch.attention_mask.sum(-1)
    col = torch.arange(batch.shape[1], device=batch.device)
    return (col >= start[:, None]) & (col < (start + prompt.attention_mask.sum(-1))[:, None])


def communicate(
    A: HookedLM,
    B: HookedLM,
    prompts_a,
    prompts_b,
    k: int,
    j: int,
    combine: str = "replace",
    adapter: nn.Module | None = None,
    positions="last",
    *,
    source_positions="last",
    inject: str = "prompt",
    control: str = "activation",
    random_norm: str = "own",
    seed: int | None = None,
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    return_ids: bool = False,
    output_scores: bool = False,
    streamer=None,
    **controls,
):
    """B's continuations of `prompts_b` while it reads A's layer-k states of `prompts_a` at layer j.

    Returns texts, or a `GenerationOutput` with `return_ids` / `output_scores` (see the module docstring).
    """
    communication = make_communication(A, B, prompts_a, prompts_b, k, j, combine, adapter, positions,
                                       source_positions, inject, control, random_norm, seed)
    eos = resolve_eos(B.tokenizer, controls.pop("eos_token_id", None), stop_at_eos)
    config = config_from(max_new_tokens, "prompt", seed=seed, eos_token_id=eos, **controls)
    out = generate(communication, check_texts(prompts_b), config, streamer=streamer,
                   output_scores=output_scores, policy=Communicate)
    return out if (return_ids or output_scores) else out.texts


def make_communication(A, B, prompts_a, prompts_b, k, j, combine="replace", adapter=None, positions="last",
                       source_positions="last", inject="prompt", control="activation", random_norm="own",
                       seed=None) -> Communication:
    """A checked `Communication` (every argument validated before any model runs)."""
    for arg, model in (("A", A), ("B", B)):
        if not isinstance(model, HookedLM):
            raise TypeError(f"{arg}: expected a stitch.HookedLM (use stitch.load_model), got {type(model).__name__}")
    prompts_a, prompts_b = check_texts(prompts_a), check_texts(prompts_b)
    if len(prompts_a) != len(prompts_b):
        raise ValueError(f"prompts_b: {len(prompts_b)} prompts for {len(prompts_a)} of prompts_a; pair them one to one")
    check_choice("inject", inject, INJECT)
    check_choice("control", control, CONTROLS)
    check_choice("random_norm", random_norm, RANDOM_NORMS)
    b_idx, a_idx = _pairs(positions, source_positions)
    k, j = check_layer("k", k, A.n_layers), check_layer("j", j, B.n_layers)
    adapter = adapter_on(_checked_adapter(adapter, A.d_model, B.d_model), B.device_of(j))  # B's side, in place
    return Communication(A, B, prompts_a, k, j, combine_for(combine), adapter, b_idx, a_idx, inject, control,
                         random_norm, 0 if seed is None else seed)


__all__ = ["CONTROLS", "INJECT", "Communication", "communicate", "make_communication"]
