"""Training records as strict JSON, and the finiteness check every step passes.

    >>> strict_record({"split": "eval", "loss_recovered": float("nan")})
    {'split': 'eval', 'loss_recovered': None, 'nonfinite': ['loss_recovered']}
    >>> nonfinite(2.3, {"weight": grad})          # None when the loss and every tensor are finite
    "weight is not finite"

JSON has no NaN or infinity (Python's `json` writes bare `NaN`, which other parsers reject), so a
non-finite number is written as null and its key listed under "nonfinite".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class NonFiniteError(ArithmeticError, ValueError):
    """A training step produced a NaN or an infinity (a ValueError, so the CLI reports it in one line)."""


def nonfinite(loss: float, tensors: dict[str, Tensor | None]) -> str | None:
    """What is not finite — the loss, or the named tensors — or None when everything is."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    bad = [name for name, t in tensors.items() if t is not None and not bool(torch.isfinite(t).all())]
    return f"{', '.join(bad)} not finite" if bad else None


def nonfinite_message(step: int, layers, cause: str, last_checkpoint) -> str:
    """Why training step `step` stopped, over which layer pairs, and which checkpoint stays in force."""
    kept = f"the last good checkpoint, {last_checkpoint.name}, is kept" if last_checkpoint else "no checkpoint was written"
    pairs = ", ".join(f"source layer {n} → target layer {m}" for n, m in layers)
    return (
        f"training step {step} ({pairs}): {cause}; stopped before anything non-finite was written ({kept}). "
        "Lower lr or grad_clip, or check the texts of this step (a changed config needs a new out directory)"
    )


def strict_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every non-finite float (at any depth) as None, their keys listed under "nonfinite"."""
    flagged: list[str] = []
    clean = _finite_or_none(record, "", flagged)
    return {**clean, "nonfinite": flagged} if flagged else clean


def _finite_or_none(value, key: str, flagged: list[str]):
    if isinstance(value, float) and not math.isfinite(value):
        flagged.append(key)
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v, f"{key}.{k}" if key else str(k), flagged) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v, f"{key}[{i}]", flagged) for i, v in enumerate(value)]
    return value
