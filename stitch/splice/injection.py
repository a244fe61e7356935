"""How A's states enter B: one strategy class per way, one registry; and how they combine with B's own.

    >>> inj = injection_for("residual")
    >>> m = inj.target_layer(None, source_layer=8, n_layers_b=B.n_layers)   # 8
    >>> logits = inj.run(B, mapped, batch_b, m)                            # B's blocks [m, L) only
    >>> logits = inj.run(B, mapped, batch_b, m, selected=mask)             # B's own states where mask is False
    >>> inj.first_block(m, selective=True)                                  # 0: B's lower blocks ran too
    >>> own = inj.own_states(B, batch_b, m)                                 # what B has there itself
    >>> last = inj.run_cached(B, mapped_step, kv, step, m)                  # the same, one cached step

`run_cached` is `run` for one step of cached generation (`stitch.models.kv`): B's new tokens read the mapped
states where this strategy writes, and their keys and values join `kv`. `write(own, mapped)` is the one place
a strategy decides what the stream at the write point becomes (here: the mapped states); a strategy that mixes
B's own stream in (`reads_own_stream = True`) makes generation run B's blocks below M too.

- `residual`: the mapped states replace B's residual stream at layer M; B runs blocks [M, L).
- `inputs_embeds`: the deliberately flawed baseline; the mapped states are given to B as `inputs_embeds`
  (B's embedding module's output, before any scaling the family applies); B runs all its blocks.
- `hybrid`: B runs its own blocks [0, M) on its own tokens, and the mapped states replace B's stream at layer M
  only at the selected positions (by default the shared ones). It answers a different question from the
  splice: can B *use* A's context where both models have read the same text, while B reads its own tokens
  below M everywhere. Records carry `answers` to say so.

Position selection (`stitch.splice.positions`): with `selected` (a bool mask on B's grid) the mapped states are
combined with B's own states at the selected positions only; elsewhere B keeps its own. B's own states at layer
M need its blocks [0, M), so a selective residual splice runs all of B (`first_block` says where B started).
How mapped and own states combine at the selected positions is a `Combine` strategy: `replace` today; a
`sum` or `mean` (activation communication) is one more class and a `register_combine`.

A new way is one subclass plus `register_injection`; `Splice`, the evaluator, fits and generation look the
strategy up by name and never branch on it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from stitch.batch import Batch
from stitch.checks import check_choice, check_layer
from stitch.models.hooks import boundary_name
from stitch.models.kv import KVCache, Step
from stitch.models.states import EMBEDDINGS, input_embeddings, model_states

Mask = Bool[Tensor, "batch pos"]


class Combine:
    """How mapped states meet B's own at the selected positions (B's own states are kept elsewhere)."""

    name: ClassVar[str]

    def apply(self, own: Tensor, mapped: Tensor, selected: Mask | None) -> Tensor:
        combined = self.combine(own, mapped.to(own.dtype))
        return combined if selected is None else torch.where(selected.unsqueeze(-1), combined, own)

    def combine(self, own: Tensor, mapped: Tensor) -> Tensor:
        raise NotImplementedError


class Replace(Combine):
    """The mapped state stands in for B's own (what a splice does)."""

    name = "replace"

    def combine(self, own, mapped):
        return mapped


COMBINES: dict[str, Combine] = {}


def register_combine(strategy: Combine) -> Combine:
    COMBINES[strategy.name] = strategy
    return strategy


register_combine(Replace())


def combine_for(name: str) -> Combine:
    check_choice("combine", name, tuple(COMBINES))
    return COMBINES[name]


class Injection:
    """One way for mapped states to enter B (see the module docstring)."""

    name: ClassVar[str]
    reads_own_stream: ClassVar[bool] = False  # does `write` read B's own stream at the write point?
    default_positions: ClassVar[str] = "all"
    reads_own_lower: ClassVar[bool] = False  # B runs its blocks [0, M) on its own tokens whatever the selection
    answers: ClassVar[str] = ""

    def target_layer(self, target_layer: int | None, source_layer: int, n_layers_b: int) -> int:
        """B's splice layer M: `target_layer`, or A's source layer when None (the DESIGN default M = N)."""
        name = "target_layer" if target_layer is not None else "target_layer (defaults to source_layer)"
        return check_layer(name, source_layer if target_layer is None else target_layer, n_layers_b)

    def write_point(self, target_layer: int):
        """The state of B the mapped states stand in for: layer M, or `EMBEDDINGS`."""
        return target_layer

    def first_block(self, target_layer: int, selective: bool) -> int:
        """The first of B's blocks the injection runs (B then runs every block up to its last)."""
        return 0 if selective or self.reads_own_lower else target_layer

    def run(
        self, B, mapped: Float[Tensor, "batch pos d_target"], batch: Batch, target_layer: int,
        selected: Mask | None = None, combine: Combine = COMBINES["replace"],
    ) -> Float[Tensor, "batch pos vocab"]:
        """B's logits with `mapped` written where `selected` (None: everywhere), B's own states elsewhere."""
        if selected is None and isinstance(combine, Replace) and not self.reads_own_lower:
            return self.run_mapped(B, mapped, batch, target_layer)
        return self.run_combined(B, mapped, batch, target_layer, selected, combine)

    def run_mapped(self, B, mapped, batch: Batch, target_layer: int) -> Tensor:
        raise NotImplementedError

    def run_combined(self, B, mapped, batch: Batch, target_layer: int, selected, combine: Combine) -> Tensor:
        raise NotImplementedError

    def run_cached(
        self,
        B,
        mapped: Float[Tensor, "batch q d_target"],
        kv: KVCache,
        step: Step,
        target_layer: int,
        *,
        below: bool = False,
    ) -> Float[Tensor, "batch vocab"]:
        """One cached step of `run`: logits of the step's last column. `below` also runs B's blocks [0, M)
        (their keys and values are then cached too, as the "prompt" policy needs for B's own later tokens)."""
        raise NotImplementedError

    def write(self, own: Tensor, mapped: Tensor) -> Tensor:
        """What B's stream at the write point becomes, given its own stream there and the mapped states."""
        return mapped

    def own_states(self, B, batch: Batch, target_layer: int) -> Float[Tensor, "batch pos d_target"]:
        """B's own states where this injection writes (fit targets, mean-ablation, generated positions)."""
        point = self.write_point(target_layer)
        return model_states(B, batch, {point})[point]


class Residual(Injection):
    name = "residual"
    answers = "can B read A's states in place of its own lower layers"

    def run_mapped(self, B, mapped, batch, target_layer):
        return B.run_from(mapped, target_layer, batch)

    def run_cached(self, B, mapped, kv, step, target_layer, *, below=False):
        point = B.hook_points[boundary_name(target_layer, B.n_layers)]
        hook = (point, lambda own, _: self.write(own, mapped.to(own.dtype)))
        return B.forward_cached(kv, step, start=0 if below else target_layer, inject=hook)

    def run_combined(self, B, mapped, batch, target_layer, selected, combine):
        # one forward of all of B: its own stream up to M, combined with the mapped states there
        hook = (boundary_name(target_layer, B.n_layers), lambda own, _: combine.apply(own, mapped, selected))
        return B.run_with_hooks(batch, fwd_hooks=[hook])


class Hybrid(Residual):
    name = "hybrid"
    default_positions = "shared"
    reads_own_lower = True
    answers = (
        "a different question: can B use A's context where both have read the same text; B runs its own "
        "blocks [0, M) on its own tokens and reads A's mapped states only at the selected positions"
    )


class InputsEmbeds(Injection):
    name = "inputs_embeds"
    answers = "the flawed baseline: A's states given to B as input embeddings"

    def target_layer(self, target_layer, source_layer, n_layers_b):
        if target_layer not in (None, 0):
            raise ValueError(
                f"target_layer: injection='inputs_embeds' feeds B's embeddings, so target_layer must "
                f"be 0 or None, got {target_layer!r}"
            )
        return 0

    def write_point(self, target_layer):
        return EMBEDDINGS

    def first_block(self, target_layer, selective):
        return 0

    def run_mapped(self, B, mapped, batch, target_layer):
        return B.run_from_embeds(mapped, batch)

    def run_cached(self, B, mapped, kv, step, target_layer, *, below=False):
        return B.forward_cached(kv, step, inputs_embeds=mapped)

    def run_combined(self, B, mapped, batch, target_layer, selected, combine):
        # B's own embeddings come from its embedding module alone: no block runs for them
        return B.run_from_embeds(combine.apply(input_embeddings(B, batch), mapped, selected), batch)


INJECTIONS: dict[str, Injection] = {}


def register_injection(strategy: Injection) -> Injection:
    INJECTIONS[strategy.name] = strategy
    return strategy


for _strategy in (Residual(), InputsEmbeds(), Hybrid()):
    register_injection(_strategy)


def injection_for(name: str) -> Injection:
    """The registered strategy called `name`; an unknown name lists the valid ones."""
    check_choice("injection", name, tuple(INJECTIONS))
    return INJECTIONS[name]
