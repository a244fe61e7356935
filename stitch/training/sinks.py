"""Where training records go besides `OUT/metrics.jsonl`: TensorBoard and Weights & Biases, when asked for.

    >>> sinks = open_sinks(("tensorboard", "wandb"), out="runs/l16", config=config.to_dict())
    >>> for sink in sinks: sink.log({"split": "train", "step": 10, "loss": 2.3})
    >>> for sink in sinks: sink.close()

Both packages are optional and imported only when named; a missing one is an error naming the option and
the package to install, raised before training starts. Only rank 0 opens sinks. Numbers are logged as
`split/key` (nested records flattened with "/"), at the record's step.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

SINKS = ("tensorboard", "wandb")
_PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a record, flattened: {"eval/classes/shared/ce_spliced": 2.1, ...}."""
    if not prefix:
        prefix = f"{record.get('split', 'train')}/" + (f"{record['pair']}/" if "pair" in record else "")
    out = {}
    for key, value in record.items():
        if key in ("split", "step", "pair"):
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, out: Path, config: dict[str, Any]):
        module = _load("tensorboard")
        self.writer = module.SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, out: Path, config: dict[str, Any], project: str | None = None):
        wandb = _load("wandb")
        self.run = wandb.init(project=project or "stitch", dir=str(out), config=config, name=out.name)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_sinks(names, out, config: dict[str, Any], wandb_project: str | None = None) -> list:
    sinks = []
    for name in names:
        if name == "wandb":
            sinks.append(WandbSink(Path(out), config, wandb_project))
        else:
            sinks.append(TensorBoardSink(Path(out), config))
    return sinks


def _load(name: str):
    module, package = _PACKAGES[name]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"log_to: {name!r} needs the {package} package, which is not importable ({err}); "
            f"pip install {package}, or drop {name!r} from log_to"
        ) from None
