"""How A's states enter B: one strategy class per way, one registry.

    >>> inj = injection_for("residual")
    >>> m = inj.target_layer(None, source_layer=8, n_layers_b=B.n_layers)   # 8
    >>> logits = inj.run(B, mapped, batch_b, m)                            # B's blocks [m, L) only
    >>> logits = inj.run(B, mapped, batch_b, m, Write(COMBINES["sum"], mask))   # own + mapped where mask
    >>> inj.first_block(m, selective=True)                                  # 0: B's lower blocks ran too
    >>> own = inj.own_states(B, batch_b, m)                                 # what B has there itself
    >>> last = inj.run_cached(B, mapped_step, kv, step, m, write)           # the same, one cached step

What the stream at the write point becomes is a `Write` (`stitch.splice.combine`): a `Combine` (`replace`,
`sum`, `mean`) at the selected positions (None: all), B's own stream elsewhere. It is the one mechanism every
forward uses: a splice forward (`run`), one step of cached generation (`run_cached`, `stitch.models.kv`:
B's new tokens read the written states and their keys and values join `kv`), the from-scratch reference
and activation communication. A write that reads B's own stream (`Write.reads_own`) needs B's blocks [0, M).

- `residual`: the mapped states replace B's residual stream at layer M; B runs blocks [M, L).
- `inputs_embeds`: the deliberately flawed baseline; the mapped states are given to B as `inputs_embeds`
  (B's embedding module's output, before any scaling the family applies); B runs all its blocks.
- `hybrid`: B runs its own blocks [0, M) on its own tokens, and the mapped states replace B's stream at layer M
  only at the selected positions (by default the shared ones). It answers a different question from the
  splice: can B *use* A's context where both models have read the same text, while B reads its own tokens
  below M everywhere. Records carry `answers` to say so.

Position selection (`stitch.splice.positions`) gives the `Write`'s mask; B's own states at layer M need its
blocks [0, M), so a selective residual splice runs all of B (`first_block` says where B started).

A new way is one subclass plus `register_injection`; `Splice`, the evaluator, fits and generation look the
strategy up by name and never branch on it.
"""

from __future__ import annotations

from typing import ClassVar

from jaxtyping import Float
from torch import Tensor

from stitch.batch import Batch
from stitch.checks import check_layer
from stitch.models.hooks import boundary_name
from stitch.models.kv import KVCache, Step
from stitch.models.states import EMBEDDINGS, input_embeddings, model_states
from stitch.registry import Registry
from stitch.splice.combine import COMBINES, EVERYWHERE, Combine, Write, combine_for, register_combine


class Injection:
    """One way for mapped states to enter B (see the module docstring)."""

    name: ClassVar[str]
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
        write: Write = EVERYWHERE,
    ) -> Float[Tensor, "batch pos vocab"]:
        """B's logits with its stream at the write point made `write(own, mapped)`."""
        if not write.reads_own and not self.reads_own_lower:
            return self.run_mapped(B, mapped, batch, target_layer)
        return self.run_combined(B, mapped, batch, target_layer, write)

    def run_mapped(self, B, mapped, batch: Batch, target_layer: int) -> Tensor:
        raise NotImplementedError

    def run_combined(self, B, mapped, batch: Batch, target_layer: int, write: Write) -> Tensor:
        raise NotImplementedError

    def run_cached(
        self,
        B,
        mapped: Float[Tensor, "batch q d_target"],
        kv: KVCache,
        step: Step,
        target_layer: int,
        write: Write = EVERYWHERE,
        *,
        below: bool = False,
    ) -> Float[Tensor, "batch vocab"]:
        """One cached step of `run` (`write.selected` is on the step's grid): logits of its last column.

        `below` also runs B's blocks [0, M) (their keys and values are cached too, as later tokens of B's own
        need); a write that reads B's own stream runs them whatever `below` says."""
        raise NotImplementedError

    def own_states(self, B, batch: Batch, target_layer: int) -> Float[Tensor, "batch pos d_target"]:
        """B's own states where this injection writes (fit targets, mean-ablation, generated positions)."""
        point = self.write_point(target_layer)
        return model_states(B, batch, {point})[point]


class Residual(Injection):
    name = "residual"
    answers = "can B read A's states in place of its own lower layers"

    def run_mapped(self, B, mapped, batch, target_layer):
        return B.run_from(mapped, target_layer, batch)

    def run_cached(self, B, mapped, kv, step, target_layer, write=EVERYWHERE, *, below=False):
        point = B.hook_points[boundary_name(target_layer, B.n_layers)]
        start = 0 if below or write.reads_own or self.reads_own_lower else target_layer
        return B.forward_cached(kv, step, start=start, inject=(point, lambda own, _: write(own, mapped)))

    def run_combined(self, B, mapped, batch, target_layer, write):
        # one forward of all of B: its own stream up to M, written over there
        hook = (boundary_name(target_layer, B.n_layers), lambda own, _: write(own, mapped))
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

    def run_cached(self, B, mapped, kv, step, target_layer, write=EVERYWHERE, *, below=False):
        # B's own embeddings come from its embedding module alone: no block runs for them
        embeds = write(B.model.get_input_embeddings()(step.input_ids), mapped) if write.reads_own else mapped
        return B.forward_cached(kv, step, inputs_embeds=embeds)

    def run_combined(self, B, mapped, batch, target_layer, write):
        return B.run_from_embeds(write(input_embeddings(B, batch), mapped), batch)


INJECTIONS: Registry[Injection] = Registry("injection")
register_injection = INJECTIONS.register  # register_injection(MyInjection()): a new way, under its `name`

for _strategy in (Residual(), InputsEmbeds(), Hybrid()):
    register_injection(_strategy)


def injection_for(name: str) -> Injection:
    """The registered strategy called `name`; an unknown name lists the valid ones."""
    return INJECTIONS.lookup(name)


__all__ = [
    "COMBINES", "EVERYWHERE", "INJECTIONS", "Combine", "Injection", "Write", "combine_for", "injection_for",
    "register_combine", "register_injection",
]
