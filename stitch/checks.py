"""Argument checks whose errors name the parameter, the value and the valid range."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def check_layer(name: str, value, n_layers: int) -> int:
    """An integer layer ℓ ∈ [0, n_layers]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}: expected an integer layer in [0, {n_layers}], got {value!r} ({type(value).__name__})"
        )
    if not 0 <= value <= n_layers:
        raise ValueError(
            f"{name}: layer {value} is out of range; valid layers are 0..{n_layers} "
            f"(0 = embeddings, {n_layers} = output of the last block, before the final norm)"
        )
    return value


def check_texts(texts) -> list[str]:
    """A non-empty list of non-empty strings (a single string becomes a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        got = repr(texts) if isinstance(texts, Sequence) else type(texts).__name__
        raise ValueError(f"texts: expected a non-empty list of strings, got {got}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        if text == "":
            raise ValueError(f"texts[{i}]: empty string; every text needs at least one character")
    return list(texts)


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")


def available_devices() -> list[str]:
    """The devices this process can run on: "cpu", then "cuda:0".."cuda:N-1", then "mps" if present."""
    import torch  # lazily: configs check their other fields without torch (`stitch --help` stays fast)

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str, device) -> torch.device:
    """A device this machine has; "meta" (shapes without data, nothing can run there) is refused.

    >>> check_device("device", "cuda:7")   # on a machine without 8 GPUs:
    ValueError: device: 'cuda:7' is not available here; available devices: ['cpu']
    """
    import torch
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{name}: {device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps' "
            f"(available here: {available_devices()})"
        ) from None
    if dev.type == "meta":
        raise ValueError(
            f"{name}: 'meta' holds shapes but no data, so nothing can run on it; "
            f"available devices: {available_devices()}"
        )
    if dev.type == "cpu":
        return dev
    wanted = str(dev) if dev.index is not None else f"{dev.type}:0"
    available = available_devices()
    if wanted not in available and not (dev.type == "mps" and "mps" in available):
        raise ValueError(f"{name}: {str(device)!r} is not available here; available devices: {available}")
    return dev


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    return batch_size


def check_range(name: str, value, low, high) -> None:
    """A number (not a bool) with low <= value <= high."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name}: got {value!r}; valid: a number in [{low}, {high}]")


def check_max_length(max_length, stride: int = 0) -> None:
    """Tokens per text or chunk (>= 2) and a stride of context below half of it (`stitch.chunks`)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length: expected an integer >= 2 (tokens per text or chunk), got {max_length!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < max_length // 2:
        raise ValueError(
            f"stride: expected an integer in [0, {max_length // 2}) (tokens of context repeated per chunk, "
            f"less than half of max_length={max_length}), got {stride!r}"
        )
