"""Where a model's stream lives, and the one place stitch moves states between devices.

    >>> A.device, A.device_of(16), A.output_device   # embedding's, block 16's, unembedding's device
    >>> with record_moves() as moves:                 # every state stitch moves, as it moves it
    ...     sp(texts)
    >>> moves[0]                                      # Move(shape=(2, 9, 4096), source=..., device=..., ...)

A model sharded with `device_map` (accelerate) has no single device: its inputs go to the embedding's
device, its stream enters layer ℓ on block ℓ's device (layer L: the final norm's) and its logits come out on
the unembedding's. A splice therefore moves A's layer-N states once, to B's device at layer M, in the
adapter's dtype (the adapter runs on B's side); nothing else of A crosses over.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (else buffer); CPU for a module holding neither."""
    # The first one only: materialising every parameter made this O(parameters), and generation asks per step.
    tensor = next(itertools.chain(module.parameters(recurse=True), module.buffers(recurse=True)), None)
    return torch.device("cpu") if tensor is None else tensor.device


def devices_of(model: nn.Module) -> list[torch.device]:
    """Every distinct device holding the model's parameters, in order of first appearance."""
    return list(dict.fromkeys(p.device for p in model.parameters()))


def is_sharded(model: nn.Module) -> bool:
    return len(devices_of(model)) > 1


@dataclass(frozen=True)
class Move:
    """One transfer: what moved (shape, from where, which dtype) and where to."""

    shape: tuple[int, ...]
    source: torch.device
    device: torch.device
    source_dtype: torch.dtype
    dtype: torch.dtype


_recorders = threading.local()


def transfer(tensor: Tensor, device, dtype: torch.dtype | None = None) -> Tensor:
    """`tensor` on `device` (in `dtype`); a real move (device or dtype) is recorded by any active
    `record_moves()` scope. Autograd flows through."""
    device = torch.device(device)
    dtype = dtype or tensor.dtype
    if device == tensor.device and dtype == tensor.dtype:
        return tensor  # nothing moves, nothing is recorded
    for moves in getattr(_recorders, "stack", ()):
        moves.append(Move(tuple(tensor.shape), tensor.device, device, tensor.dtype, dtype))
    return tensor.to(device=device, dtype=dtype, non_blocking=tensor.device.type == "cuda")


@contextlib.contextmanager
def record_moves() -> Iterator[list[Move]]:
    """Collect every `transfer` made on this thread inside the block (tests, and a check before a long run)."""
    stack = _recorders.__dict__.setdefault("stack", [])
    moves: list[Move] = []
    stack.append(moves)
    try:
        yield moves
    finally:
        stack.remove(moves)


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Parameters of `model` do not require grad inside the block; their own flags come back afterwards.

    A graph built inside runs through the activations only (what an adapter needs to train through a
    frozen model): no weight gradient is ever computed or stored, and the caller's flags are untouched.
    """
    thawed = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in thawed:
            p.requires_grad_(False)
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


def move_model(arg: str, model, device: torch.device) -> list[str]:
    """Move HookedLM `model` whole to `device` (what `Splice.to` does); a sharded model is refused by name."""
    if is_sharded(model.model):
        raise ValueError(
            f"device: model {arg} ({model.name!r}) is sharded over {[str(d) for d in devices_of(model.model)]} "
            f"by device_map and has no single device to move to {str(device)!r}; move the adapter with "
            "sp.adapter.to(...) or load the model on one device"
        )
    before = model.device
    model.model.to(device)
    return [f"{arg} ({before} → {model.device})"]


def adapter_on(adapter: nn.Module, device: torch.device) -> nn.Module:
    """The adapter on B's side (moved in place); one on 'meta' has no data to move and is left to fail loudly."""
    params = list(adapter.parameters())
    if params and all(not p.is_meta for p in params) and any(p.device != device for p in params):
        adapter.to(device)
    return adapter
