"""The optimizer's and the RNGs' state as flat tensors and JSON, and back (what a checkpoint stores; no pickle).

>>> tensors, groups = optimizer_tensors(optimizer)          # {"optim.0.exp_avg": ...}, param groups as JSON
>>> optimizer.load_state_dict(optimizer_state(tensors, groups))
>>> tensors.update(rng_tensors()); restore_rng(tensors, python_rng())
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as flat tensors `optim.{param}.{key}`, and its param groups as JSON."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, json.loads(json.dumps(sd["param_groups"]))


def optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict[str, Any]:
    """The `optimizer.state_dict()` that `optimizer_tensors` flattened."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    """The torch (and CUDA) RNG states as tensors `rng.torch`, `rng.cuda.{i}`."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def python_rng() -> list:
    """Python's `random` state as JSON."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_rng(tensors: dict[str, torch.Tensor], python_state: list) -> None:
    """Put back the RNG states `rng_tensors` and `python_rng` took (CUDA only on the same device count)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))
