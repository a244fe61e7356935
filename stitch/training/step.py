"""One optimizer step over layer pairs and objectives: micro-batches from the models or from a store.

    >>> inputs = LiveInputs(A, B, texts, source_layers=[8], target_layers=[8])      # or CachedInputs(store)
    >>> micro = inputs.prepare([0, 5, 7])                     # pairing + A's states (+ B's targets)
    >>> view = PairView(splice, micro)                        # what the objectives of one pair read
    >>> losses = step_backward(terms, [micro, ...], dist)    # backward of the global mean; the logged means

`LiveInputs` runs A (blocks [0, max N)) and, where an objective needs them, B's own states or logits, every
step; `CachedInputs` reads the same tensors from an `ActivationStore`. Both give the same micro-batch, so the
two paths make the same updates. A `Term` is one objective on one layer pair with the pair's weight; the step's
loss is Σ weight · (sum of the objective's item losses) / (its item count over every rank and micro-batch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stitch.activations.store import ActivationStore, StoredBatch
from stitch.alignment.pairing import Pairing, pair_texts
from stitch.losses import IGNORE, token_cross_entropy
from stitch.models.states import model_states
from stitch.training import distributed
from stitch.training.losses import Objective

MicroBatch = StoredBatch  # the same four things, whether read from a store or computed now


@dataclass
class LiveInputs:
    """Micro-batches computed from the models at every step."""

    A: object
    B: object
    texts: list[str]
    source_layers: Sequence[int]
    target_layers: Sequence[int] = ()
    native_logits: bool = False

    @torch.no_grad()
    def prepare(self, indices: Sequence[int]) -> MicroBatch:
        pairing = pair_texts(self.A, self.B, [self.texts[i] for i in indices], padding_side="right")
        source = model_states(self.A, pairing.source, set(self.source_layers))
        target = model_states(self.B, pairing.target, set(self.target_layers)) if self.target_layers else {}
        logits = self.B.logits(pairing.target) if self.native_logits else None
        return MicroBatch(pairing, source, target, logits)


@dataclass
class CachedInputs:
    """Micro-batches read from an activation store (built once, reused every epoch); A's side on `device`,
    B's side on `target_device` (default: `device`), as the live path places them."""

    store: ActivationStore
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    target_device: torch.device | None = None

    def prepare(self, indices: Sequence[int]) -> MicroBatch:
        return self.store.batch(list(indices), device=self.device, target_device=self.target_device)


class PairView:
    """One layer pair of one micro-batch, as the objectives read it; each tensor is computed once."""

    def __init__(self, splice, micro: MicroBatch):
        self.splice, self.micro = splice, micro

    @property
    def pairing(self) -> Pairing:
        return self.micro.pairing

    @functools.cached_property
    def labels(self) -> Tensor:
        return self.splice.labels(self.pairing)

    def class_mask(self, name: str) -> Tensor:
        return self.pairing.class_mask(name)

    @functools.cached_property
    def mapped(self) -> Tensor:
        """The adapter's image of A's states on B's grid (what the splice feeds B)."""
        return self.splice.map_states(self.micro.source[self.splice.source_layer], self.pairing)

    @functools.cached_property
    def logits(self) -> Tensor:
        sp = self.splice
        return sp.target_logits(self.mapped, sp.target_batch(self.pairing))

    @property
    def native_logits(self) -> Tensor:
        return self.micro.logits

    @functools.cache  # noqa: B019 - a view lives for one micro-batch
    def pairs(self, positions: str) -> tuple[Tensor, Tensor, Tensor]:
        return self.pairing.pairs(drop_special=True, classes=None if positions == "all" else [positions])

    def pair_states(self, positions: str) -> tuple[Tensor, Tensor]:
        """(adapter's image of A's state, B's own layer-M state) at every pair of the class."""
        rows, _, tgt = self.pairs(positions)
        target = self.micro.target[self.splice.target_layer]
        return self.mapped[rows, tgt], target[rows, tgt].to(self.mapped.dtype)


@dataclass(frozen=True)
class Term:
    """One objective on one layer pair; `key` names it in the metrics ("ce", or "8:8/ce" with several pairs)."""

    key: str
    pair: int  # index of the layer pair (its splice)
    objective: Objective
    weight: float  # the pair's weight times the objective's


def pair_terms(keys: Sequence[str], weights: Sequence[float], objectives: Sequence[Objective]) -> list[Term]:
    """Every objective on every layer pair (keyed "N:M/name" when there are several pairs)."""
    several = len(keys) > 1
    return [
        Term(f"{key}/{o.label}" if several else o.label, i, o, weight * o.weight)
        for i, (key, weight) in enumerate(zip(keys, weights, strict=True))
        for o in objectives
    ]


def global_counts(terms: Sequence[Term], views: list[list[PairView]], dist: distributed.Dist) -> list[float]:
    """Each term's item count over every micro-batch and rank (the pairing decides it: no forward needed)."""
    local = [sum(term.objective.count(mv[term.pair]) for mv in views) for term in terms]
    counts = distributed.all_reduce_sum(local, dist).tolist()
    for term, count in zip(terms, counts, strict=True):
        if count == 0:
            raise ValueError(
                f"objectives: {term.key} has nothing to average over in this step on any of the "
                f"{dist.world_size} rank(s) (no label or pair of positions={term.objective.positions!r}); "
                "use longer texts or positions='all'"
            )
    return counts


def step_backward(terms: Sequence[Term], views: list[list[PairView]], dist: distributed.Dist,
                  precision=None) -> dict[str, float]:  # fmt: skip
    """Backward of the step's loss, one micro-batch at a time; returns the global mean of every term and
    the weighted total ("loss"). Gradients are this rank's share: `distributed.sum_gradients` completes them."""
    counts = global_counts(terms, views, dist)
    sums = torch.zeros(len(terms), dtype=torch.float64)
    for micro_views in views:
        total = None
        with _context(precision):
            for i, term in enumerate(terms):
                part = term.objective.loss_sum(micro_views[term.pair], dist)
                sums[i] += part.detach().double().cpu()
                scaled = part * (term.weight / counts[i])
                total = scaled if total is None else total + scaled
        if total is not None and total.requires_grad:
            total.backward() if precision is None else precision.backward(total)
    means = (distributed.all_reduce_sum(sums, dist) / torch.tensor(counts, dtype=torch.float64)).tolist()
    record = {term.key: mean for term, mean in zip(terms, means, strict=True)}
    record["loss"] = sum(term.weight * mean for term, mean in zip(terms, means, strict=True))
    return record


def backward(sp, texts: list[str], dist: distributed.Dist) -> tuple[float, int]:
    """Forward and backward of the splice on this rank's `texts`; returns (mean loss, tokens) over all ranks.

    The adapter's gradients equal those of one process on every rank's texts together (see
    `distributed.global_mean`), however unevenly the tokens are spread over the ranks.
    """
    out = sp(texts)
    count = int((out.labels != IGNORE).sum())
    # a share without labels backpropagates a zero through the adapter: DDP waits for every rank's backward
    local = out.loss if count else token_cross_entropy(out.logits, out.labels).sum()
    loss, mean, count = distributed.global_mean(local, count, dist)
    loss.backward()
    return mean, count


def _context(precision):
    return precision.autocast() if precision is not None else _Null()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
