"""Mixed precision for training: bf16 or fp16 autocast of the frozen models' forwards on a GPU, fp32 adapters.

    >>> precision = precision_for("bf16", torch.device("cuda"))
    >>> with precision.autocast():
    ...     loss = ...                        # B's blocks run in bf16; the adapter's weights stay fp32
    >>> precision.backward(loss); precision.unscale(optimizer); ...clip...; precision.step(optimizer)

fp16 has too little range for gradients: its loss is scaled (`torch.amp.GradScaler`), the gradients
unscaled before clipping, and a step whose gradients overflowed is skipped by the scaler. bf16 needs no
scaling. On a CPU, autocast is refused: the CPU paths are fp32 (the tests check the CUDA path with recorders).
"""

from __future__ import annotations

import contextlib

import torch

AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FullPrecision:
    """No autocast, no scaling."""

    name = "none"

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale(self, optimizer) -> None:
        pass

    def step(self, optimizer) -> None:
        optimizer.step()


class Autocast(FullPrecision):
    """`torch.autocast(device_type, dtype)` around the forwards; a GradScaler for fp16."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device_type, self.dtype = name, device.type, AUTOCAST[name]
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype is torch.float16 else None

    def autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer):
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer):
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def precision_for(name: str, device: torch.device) -> FullPrecision:
    """The precision strategy of `autocast=name` on `device` (autocast needs a CUDA device)."""
    if name not in AUTOCAST:
        raise ValueError(f"autocast: got {name!r}; valid: {list(AUTOCAST)}")
    if name == "none":
        return FullPrecision()
    if torch.device(device).type != "cuda":
        raise ValueError(
            f"autocast: {name!r} needs a CUDA device, but the models are on {device}; use autocast='none'"
        )
    return Autocast(name, torch.device(device))
