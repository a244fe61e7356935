"""Training objectives: one strategy class per loss, a registry, and a spec string per objective.

    >>> objectives = parse_objectives(["ce", "mse:weight=0.5,positions=shared", "infonce:temperature=0.05"])
    >>> obj = objectives[0]
    >>> n = obj.count(view)                      # what the loss is averaged over (known before any forward)
    >>> obj.loss_sum(view, dist) / n             # the mean over those items (a rank's share under torchrun)

Every objective sees a `stitch.training.step.PairView` (one layer pair of one micro-batch): the pairing,
B's logits under injection, the adapter's output on B's grid, B's own states at layer M and B's own
next-token logits. An objective returns the *sum* of its per-item losses on this rank; the loop divides by
the count over every rank and micro-batch of the step, so the gradient is the full-batch gradient whatever
the world size or the accumulation.

- `ce`: B's next-token cross-entropy under injection (labels of the splice's grid);
- `kl`: KL(B's own next-token distribution ‖ B's under injection) at every real B position of the class;
- `mse`, `cosine`: the adapter's image of A's state against B's own layer-M state at each pair of the
  pairing (`Pairing.pairs`), mean squared error per dimension or 1 − cosine;
- `infonce`: symmetric InfoNCE over the pairs, negatives from every rank (`distributed.all_gather_rows`,
  gradient-correct); the anchor's own positive is its target, never a negative, and a negative equal to the
  positive (the same prefix in two texts gives the same state) is masked out;
- `soft_contrastive`: cross-entropy of the adapter's similarity distribution over the gathered B states
  against B's own (softmax of B-B similarities at `target_temperature`): soft labels instead of one-hot.

`positions` picks the position class: "all", "shared" or "lagging" (`stitch.alignment.pairing`).
A new loss is one frozen dataclass here plus `OBJECTIVES.register(MyLoss)` (it is listed by its `name`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from stitch.checks import check_choice
from stitch.losses import IGNORE, token_cross_entropy
from stitch.registry import Registry
from stitch.training import distributed

POSITIONS = ("all", "shared", "lagging")
_DUPLICATE = 1 - 1e-6  # cosine above which two B states are the same state (a repeated prefix)


@dataclass(frozen=True)
class Objective:
    """A weighted loss over one kind of item (labels, positions or pairs) of a class of positions."""

    name: ClassVar[str]
    needs_target_states: ClassVar[bool] = False
    needs_native_logits: ClassVar[bool] = False
    target_grid_only: ClassVar[bool] = True

    weight: float = 1.0
    positions: str = "all"

    def __post_init__(self):
        _check_positive(f"{self.name}: weight", self.weight, zero_ok=True)
        check_choice(f"{self.name}: positions", self.positions, POSITIONS)

    @property
    def label(self) -> str:
        return self.name

    def count(self, view) -> int:
        raise NotImplementedError

    def loss_sum(self, view, dist: distributed.Dist) -> Tensor:
        raise NotImplementedError

    def spec(self) -> str:
        """The spec string that parses back to this objective."""
        values = ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}:{values}"


@dataclass(frozen=True)
class CrossEntropy(Objective):
    name: ClassVar[str] = "ce"
    target_grid_only: ClassVar[bool] = False

    def _mask(self, view) -> Tensor:
        mask = view.labels != IGNORE
        return mask if self.positions == "all" else mask & view.class_mask(self.positions)

    def count(self, view) -> int:
        return int(self._mask(view).sum())

    def loss_sum(self, view, dist):
        return token_cross_entropy(view.logits, view.labels)[self._mask(view)].sum()


@dataclass(frozen=True)
class KLToNative(Objective):
    name: ClassVar[str] = "kl"
    needs_native_logits: ClassVar[bool] = True

    def count(self, view) -> int:
        return int(view.class_mask(self.positions).sum())

    def loss_sum(self, view, dist):
        mask = view.class_mask(self.positions)
        log_q = F.log_softmax(view.logits.float()[mask], dim=-1)
        log_p = F.log_softmax(view.native_logits.float()[mask], dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum()


@dataclass(frozen=True)
class _PairObjective(Objective):
    needs_target_states: ClassVar[bool] = True

    def count(self, view) -> int:
        return int(view.pairs(self.positions)[0].numel())


@dataclass(frozen=True)
class MeanSquaredError(_PairObjective):
    name: ClassVar[str] = "mse"

    def loss_sum(self, view, dist):
        x, y = view.pair_states(self.positions)
        return (x - y).pow(2).mean(-1).sum()


@dataclass(frozen=True)
class CosineDistance(_PairObjective):
    name: ClassVar[str] = "cosine"

    def loss_sum(self, view, dist):
        x, y = view.pair_states(self.positions)
        return (1 - F.cosine_similarity(x, y, dim=-1)).sum()


@dataclass(frozen=True)
class InfoNCE(_PairObjective):
    name: ClassVar[str] = "infonce"
    temperature: float = 0.07
    symmetric: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_positive(f"{self.name}: temperature", self.temperature)

    def loss_sum(self, view, dist):
        x, y = (F.normalize(t, dim=-1) for t in view.pair_states(self.positions))
        x_all, offset = distributed.all_gather_rows(x, dist)
        y_all, _ = distributed.all_gather_rows(y, dist)
        targets = torch.arange(x.shape[0], device=x.device) + offset
        false_negatives = _same_states(y, y_all, targets)
        loss = _contrastive(x @ y_all.T / self.temperature, targets, false_negatives)
        if not self.symmetric:
            return loss
        return 0.5 * (loss + _contrastive(y @ x_all.T / self.temperature, targets, false_negatives))


@dataclass(frozen=True)
class SoftContrastive(_PairObjective):
    name: ClassVar[str] = "soft_contrastive"
    temperature: float = 0.07
    target_temperature: float = 0.07

    def __post_init__(self):
        super().__post_init__()
        _check_positive(f"{self.name}: temperature", self.temperature)
        _check_positive(f"{self.name}: target_temperature", self.target_temperature)

    def loss_sum(self, view, dist):
        x, y = (F.normalize(t, dim=-1) for t in view.pair_states(self.positions))
        y_all, _ = distributed.all_gather_rows(y, dist)
        soft = F.softmax(y @ y_all.T / self.target_temperature, dim=-1)
        return -(soft * F.log_softmax(x @ y_all.T / self.temperature, dim=-1)).sum()


def _same_states(y: Tensor, y_all: Tensor, targets: Tensor) -> Tensor:
    """[n, n_all]: columns holding the very state of row i's positive, other than the positive itself."""
    same = (y @ y_all.T) > _DUPLICATE
    same[torch.arange(y.shape[0], device=y.device), targets] = False
    return same


def _contrastive(logits: Tensor, targets: Tensor, masked: Tensor) -> Tensor:
    logits = logits.float().masked_fill(masked, -math.inf)
    return F.cross_entropy(logits, targets, reduction="sum")


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
for _objective in (CrossEntropy, KLToNative, MeanSquaredError, CosineDistance, InfoNCE, SoftContrastive):
    OBJECTIVES.register(_objective)


def parse_objective(spec: str) -> Objective:
    """`"name"` or `"name:key=value,key=value"` (values read as YAML) → the objective."""
    if isinstance(spec, Objective):
        return spec
    name, _, rest = str(spec).partition(":")
    cls = OBJECTIVES.lookup(name.strip(), arg="objectives")
    valid = [f.name for f in dataclasses.fields(cls)]
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in valid:
            raise ValueError(
                f"objectives: {item!r} in {spec!r} is not key=value with a key of {cls.name}; valid keys: {valid}"
            )
        options[key.strip()] = yaml.safe_load(value)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"objectives: {spec!r}: {err}") from None


def parse_objectives(specs) -> tuple[Objective, ...]:
    """Every spec parsed; at least one, each label once (use distinct objectives, not the same twice)."""
    if isinstance(specs, str) or not specs:
        raise ValueError(f"objectives: expected a non-empty list of objective specs, got {specs!r}")
    objectives = tuple(parse_objective(s) for s in specs)
    labels = [o.label for o in objectives]
    if len(set(labels)) != len(labels):
        raise ValueError(f"objectives: each objective may appear once, got {labels}")
    return objectives


def _check_positive(name: str, value, zero_ok: bool = False) -> None:
    low = "0" if zero_ok else "> 0"
    valid = f"a finite number {'>= 0' if zero_ok else low}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected {valid}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name}: expected {valid}, got {value!r}")
