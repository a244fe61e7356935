"""Training adapters by gradient descent: config, loop, checkpoints, distributed helpers.

    >>> from stitch.training import TrainConfig, train_adapter

Names resolve on first use (PEP 562): scoring (`stitch.splice.score`) uses `stitch.training.distributed`
and the loop uses scoring, so this package must not import the loop eagerly; and `stitch.training.config`
(the command line's `stitch train` options) imports without torch.
"""

from stitch._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "stitch.training.config",
    "TrainResult": "stitch.training.loop",
    "train": "stitch.training.loop",
    "train_adapter": "stitch.training.loop:train",
    "checkpoint": "stitch.training.checkpoint",
    "distributed": "stitch.training.distributed",
    "config": "stitch.training.config",
    "loop": "stitch.training.loop",
    "evaluate": "stitch.training.evaluate",
}
__all__ = ["TrainConfig", "TrainResult", "checkpoint", "distributed", "train", "train_adapter"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
