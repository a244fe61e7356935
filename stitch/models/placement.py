"""Where a model's stream lives, and the one place stitch moves states between devices.

    >>> A.device, A.device_of(16), A.output_device   # embedding's, block 16's, unembedding's device
    >>> with record_moves() as moves:                 # every tensor stitch moves, as it moves it
    ...     sp(texts)
    >>> moves[0]                                      # Move(shape=(2, 9, 4096), source=..., device=..., ...)

A model sharded with `device_map` (accelerate) has no single device: its inputs go to the embedding's
device, its stream enters layer ℓ on block ℓ's device (layer L: the final norm's) and its logits come out on
the unembedding's (or back on the inputs' device, when accelerate dispatched the whole model). Every such
question goes through `module_device`: where the module that consumes a tensor computes. A splice
therefore moves A's layer-N states once, to B's device at layer M, in the adapter's dtype (the adapter runs
on B's side, where `adapter_on` puts it, once, straight from wherever it was read: `record_moves` lists its
tensors too); nothing else of A crosses over. A write that keeps B's own states brings B's stream (still on
block M-1's device at block M's pre-hook) and the position mask to block M's device, once
(`stitch.splice.combine.Write`). What HF computes itself - masks, position ids, cache positions, rotary
embeddings - is moved to each block by accelerate's dispatch hooks, and a `DynamicCache` layer is created on
the device of the keys its block writes, so a KV cache (`stitch.models.kv`) keeps each layer on its block's
device with nothing moved by stitch (tests/test_sharded.py).
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
    """Where `module` computes, so where a tensor it consumes must be: the one question stitch asks of devices.

    A module dispatched by accelerate (`device_map`) computes on its hook's execution device, which is
    not where its weights sit when they are offloaded (then they are on "meta" or the CPU); any other
    module computes where its first parameter (else buffer) is, and one holding neither on the CPU.
    """
    execution = _execution_device(getattr(module, "_hf_hook", None))
    if execution is not None:
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    # The first one only: materialising every parameter made this O(parameters), and generation asks per step.
    tensor = next(itertools.chain(module.parameters(recurse=True), module.buffers(recurse=True)), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _execution_device(hook):
    """The execution device of an accelerate hook, or of the first hook in a SequentialHook that has one."""
    return next((h.execution_device for h in _hooks(hook) if getattr(h, "execution_device", None) is not None), None)


def _hooks(hook) -> tuple:
    """An accelerate hook and, for a SequentialHook, the hooks it chains (None: no hook)."""
    return (hook, *getattr(hook, "hooks", ()))


def returns_to_input_device(model: nn.Module) -> bool:
    """Whether `model`'s outputs are moved back to its inputs' device: what accelerate's `dispatch_model`
    (so `from_pretrained(device_map=...)`) does to the whole model, whatever device its last block is on."""
    return any(getattr(h, "io_same_device", False) for h in _hooks(getattr(model, "_hf_hook", None)))


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
    _record(tensor, device, dtype)
    return tensor.to(device=device, dtype=dtype, non_blocking=tensor.device.type == "cuda")


def _record(tensor: Tensor, device: torch.device, dtype: torch.dtype) -> None:
    for moves in getattr(_recorders, "stack", ()):
        moves.append(Move(tuple(tensor.shape), tensor.device, device, tensor.dtype, dtype))


@contextlib.contextmanager
def record_moves() -> Iterator[list[Move]]:
    """Collect every `transfer` (and every adapter tensor `adapter_on` moves) made on this thread inside the
    block (tests, and a check before a long run)."""
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


def adapter_dtype(adapter: nn.Module, states: Tensor) -> torch.dtype:
    """The dtype `states` are cast to before `adapter` maps them: its first floating parameter's, else theirs."""
    param = next(adapter.parameters(), None)
    return states.dtype if param is None or not param.is_floating_point() else param.dtype


def adapter_on(adapter: nn.Module, device: torch.device) -> nn.Module:
    """The adapter on B's side (moved in place, each tensor that moves recorded by `record_moves`); one on
    'meta' has no data to move and is left to fail loudly. The one place an adapter is put on a device:
    callers hand over the adapter where it was read (the CPU) and let the Splice place it."""
    params = list(adapter.parameters())
    if params and all(not p.is_meta for p in params) and any(p.device != device for p in params):
        for tensor in itertools.chain(params, adapter.buffers()):
            if tensor.device != device:
                _record(tensor, device, tensor.dtype)
        adapter.to(device)
    return adapter
