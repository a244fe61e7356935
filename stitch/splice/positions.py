"""Which of B's positions a splice writes A's mapped states to; the others keep B's own states.

    >>> Positions.parse("all").mask(pairing)          # None: every position (B's lower blocks not needed)
    >>> Positions.parse("shared").mask(pairing)       # [batch, pos_t] bool: where both models read the same prefix
    >>> Positions.parse("last").mask(pairing)         # each text's last real token
    >>> Positions.parse([0, -1]).mask(pairing)        # token indices among each text's real tokens; -1 = last
    >>> Positions.parse("0,-1")                       # the same, as the command line spells it
    >>> Positions.parse(mask)                         # a bool tensor shaped like B's batch [batch, pos_t]

A selection other than "all" needs B's own states at the unselected positions, so B runs its blocks [0, M) on
its own tokens as well (see `stitch.splice.injection`). Named selections are a registry (`SELECTIONS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from stitch.alignment.pairing import Pairing
from stitch.batch import Batch
from stitch.registry import Registry

Mask = Bool[Tensor, "batch pos_t"]


def _token_indices(batch: Batch, indices: Sequence[int]) -> Mask:
    """Bool mask of the given token indices among each row's real tokens (negative: from the end)."""
    real = batch.attention_mask.bool()
    rank = real.long().cumsum(-1) - 1  # index of each real token among its row's real tokens
    n = real.sum(-1, keepdim=True)
    mask = torch.zeros_like(real)
    for i in indices:
        wanted = n + i if i < 0 else torch.full_like(n, i)
        mask |= real & (rank == wanted)
    return mask


SELECTIONS: Registry[Callable[[Pairing], Mask | None]] = Registry("positions", {
    "all": lambda pairing: None,
    "shared": lambda pairing: pairing.class_mask("shared"),
    "last": lambda pairing: _token_indices(pairing.target, [-1]),
})


@dataclass(frozen=True, eq=False)
class Positions:
    """A parsed position selection: `label` for records, `mask(pairing)` on B's grid (None = all)."""

    label: str
    select: Callable[[Pairing], Mask | None]
    key: object  # what identifies the selection in a cache (the tensor's id for a user mask)
    fit_classes: tuple[str, ...] | None = None  # the pairs an adapter for this selection is fitted on

    @property
    def every(self) -> bool:
        return self.label == "all"

    def mask(self, pairing: Pairing) -> Mask | None:
        return self.select(pairing)

    @classmethod
    def parse(cls, value) -> Positions:
        """From "all" / "shared" / "last", token indices (a list or "0,3,-1"), a bool mask, or a Positions."""
        if isinstance(value, Positions):
            return value
        if isinstance(value, str) and value in SELECTIONS:
            classes = ("shared",) if value == "shared" else None
            return cls(value, SELECTIONS[value], value, classes)
        if isinstance(value, Tensor):
            return _user_mask(value)
        indices = _indices(value)
        return cls("indices " + ",".join(map(str, indices)), lambda p: _token_indices(p.target, indices), indices)


def _indices(value) -> tuple[int, ...]:
    valid = f'valid: {sorted(SELECTIONS)}, token indices (e.g. [0, -1] or "0,-1") or a bool mask [batch, pos]'
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"positions: got {value!r}; {valid}") from None
    if not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"positions: got {value!r}; {valid}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise ValueError(f"positions: got {value!r}; indices must be integers; {valid}")
    return tuple(value)


def _user_mask(mask: Tensor) -> Positions:
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"positions: a mask must be a bool tensor [batch, pos], got {mask.dtype} of shape {tuple(mask.shape)}")

    def select(pairing: Pairing) -> Mask:
        if tuple(mask.shape) != pairing.target.shape:
            raise ValueError(
                f"positions: mask of shape {tuple(mask.shape)} but B's batch is {pairing.target.shape} "
                "(a mask fits one batch of texts; use indices or a named selection for others)"
            )
        return mask.to(pairing.target.device) & pairing.target.attention_mask.bool()

    return Positions("mask", select, ("mask", id(mask)))
