"""The one seam for what B's stream becomes where A's mapped states are written: a `Write`.

    >>> write = Write(combine_for("sum"), selected=mask)     # mask: [batch, pos] bool on B's grid, or None
    >>> stream = write(own, mapped)                          # own + mapped where mask, own elsewhere
    >>> write.reads_own                                      # True: B's own stream at the write point is needed

A `Combine` says how mapped and own states meet at a selected position:

- `replace`: the mapped state stands in for B's own (a splice; Ramesh & Li's `replace`);
- `sum`: own + mapped; `mean`: (own + mapped) / 2 (Ramesh & Li, "Communicating Activations Between
  Language Model Agents", ICML 2025, sec. 3).

Every forward that writes mapped states (a splice forward, a cached generation step, its reference, a
communication) goes through `Write.__call__`; injections and policies never branch on the combine. A new way
is one `Combine` subclass plus `register_combine`. The write happens on the mapped states' device (B's block
M's): B's own stream and the mask are brought there (`stitch.models.placement.transfer`, once per write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool
from torch import Tensor

from stitch.models.placement import transfer
from stitch.registry import Registry

Mask = Bool[Tensor, "batch pos"]


class Combine:
    """How mapped states meet B's own at the selected positions (B's own states are kept elsewhere)."""

    name: ClassVar[str]
    reads_own: ClassVar[bool] = True  # does the result depend on B's own stream at the selected positions?

    def apply(self, own: Tensor, mapped: Tensor, selected: Mask | None) -> Tensor:
        combined = self.combine(own, mapped.to(own.dtype))
        return combined if selected is None else torch.where(selected.unsqueeze(-1), combined, own)

    def combine(self, own: Tensor, mapped: Tensor) -> Tensor:
        raise NotImplementedError


class Replace(Combine):
    """The mapped state stands in for B's own (what a splice does)."""

    name = "replace"
    reads_own = False

    def combine(self, own, mapped):
        return mapped


class Sum(Combine):
    """B's own state plus the mapped one."""

    name = "sum"

    def combine(self, own, mapped):
        return own + mapped


class Mean(Combine):
    """The average of B's own state and the mapped one."""

    name = "mean"

    def combine(self, own, mapped):
        return (own + mapped) / 2


COMBINES: Registry[Combine] = Registry("combine")
register_combine = COMBINES.register  # register_combine(MyCombine()): a new combine, under its `name`

for _combine in (Replace(), Sum(), Mean()):
    register_combine(_combine)


def combine_for(name: str | Combine) -> Combine:
    """The registered combine called `name`; an unknown name lists the valid ones."""
    if isinstance(name, Combine):
        return name
    return COMBINES.lookup(name)


@dataclass(frozen=True, eq=False)
class Write:
    """What B's stream at the write point becomes: `combine(own, mapped)` at `selected` (None: every position)."""

    combine: Combine = COMBINES["replace"]
    selected: Mask | None = None

    @property
    def reads_own(self) -> bool:
        """Whether B's own stream at the write point is read (then B's lower blocks must run)."""
        return self.selected is not None or self.combine.reads_own

    def __call__(self, own: Tensor, mapped: Tensor) -> Tensor:
        # The write happens where `mapped` is: on B's device at the write point (block M's). On a model
        # sharded with device_map, B's own stream reaching block M's pre-hook is still on block M-1's device
        # (accelerate moves it inside block M), and the mask was built on B's embedding device.
        own = transfer(own, mapped.device)
        selected = None if self.selected is None else transfer(self.selected, mapped.device)
        return self.combine.apply(own, mapped, selected)


EVERYWHERE = Write()  # replace at every position: the plain splice
