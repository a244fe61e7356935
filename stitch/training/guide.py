"""Evaluation that guides training: the held-out metric, early stopping with patience, the best step.

    >>> rule = EarlyStopping(metric="ce_spliced", patience=3, min_delta=0.0)
    >>> state = rule.replay([(0, 5.1), (100, 4.2), (200, 4.3), (300, 4.25), (400, 4.4)])
    >>> state.best_step, state.waited, state.stop          # 100, 3, True

The rule is a pure function of the evaluations so far, so a resumed run replays its history and stops
exactly where an uninterrupted run would. An evaluation improves when its metric beats the best so far by
more than `min_delta` (lower is better for cross-entropies, higher for `loss_recovered` and cosines); a NaN
never improves. With `patience` p > 0 the run stops after p evaluations in a row without improvement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# metric: whether higher is better
METRICS = {
    "ce_spliced": False,
    "loss_recovered": True,
    "cosine_after": True,
}  # held-out only, never the training loss


@dataclass(frozen=True)
class GuideState:
    best_step: int | None
    best_value: float | None
    waited: int
    stop: bool


@dataclass(frozen=True)
class EarlyStopping:
    metric: str = "ce_spliced"
    patience: int = 0
    min_delta: float = 0.0

    def improves(self, value: float, best: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + self.min_delta if METRICS[self.metric] else value < best - self.min_delta

    def replay(self, evaluations: Sequence[tuple[int, float]]) -> GuideState:
        best_step, best, waited = None, None, 0
        for step, value in evaluations:
            if self.improves(value, best):
                best_step, best, waited = step, value, 0
            else:
                waited += 1
        return GuideState(best_step, best, waited, bool(self.patience) and waited >= self.patience)


def metric_at(records: Sequence[dict], metric: str, weights: dict[str, float]) -> float:
    """The weighted mean of `metric` over the layer pairs' eval records of one step (NaN if any is missing)."""
    total, weight = 0.0, 0.0
    for record in records:
        value = record.get(metric)
        if value is None or not math.isfinite(value):
            return float("nan")
        w = weights.get(record.get("pair", ""), 1.0)
        total, weight = total + w * value, weight + w
    return total / weight if weight else float("nan")


def evaluations(history: Sequence[dict], metric: str, weights: dict[str, float]) -> list[tuple[int, float]]:
    """(step, metric) of every evaluation in `history`, layer pairs combined."""
    by_step: dict[int, list[dict]] = {}
    for record in history:
        if record.get("split") == "eval":
            by_step.setdefault(record["step"], []).append(record)
    return [(step, metric_at(records, metric, weights)) for step, records in sorted(by_step.items())]
