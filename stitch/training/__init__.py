"""Training adapters by gradient descent: config, loop, checkpoints, distributed helpers.

    >>> from stitch.training import TrainConfig, train_adapter
"""

from stitch.training import checkpoint, distributed
from stitch.training.config import TrainConfig
from stitch.training.loop import TrainResult, train

train_adapter = train

__all__ = ["TrainConfig", "TrainResult", "checkpoint", "distributed", "train", "train_adapter"]
