"""Training adapters by gradient descent: config, loop, checkpoints, distributed helpers.

    >>> from stitch.training import TrainConfig, train_adapter

The loop's names load on first use: scoring (`stitch.splice.score`) uses `stitch.training.distributed`,
and the loop uses scoring, so this package must not import the loop eagerly.
"""

import importlib

_LAZY = {
    "TrainConfig": ("stitch.training.config", "TrainConfig"),
    "TrainResult": ("stitch.training.loop", "TrainResult"),
    "train": ("stitch.training.loop", "train"),
    "train_adapter": ("stitch.training.loop", "train"),
}

__all__ = ["TrainConfig", "TrainResult", "checkpoint", "distributed", "train", "train_adapter"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in ("checkpoint", "distributed", "config", "loop", "evaluate"):
        return importlib.import_module(f"stitch.training.{name}")
    raise AttributeError(f"module 'stitch.training' has no attribute {name!r}")
