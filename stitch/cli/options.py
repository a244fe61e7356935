"""Option fields and checks every subcommand's config shares; imports no torch (`stitch --help` stays fast).

    >>> @dataclass(frozen=True, kw_only=True)
    ... class MyConfig(ModelPairConfig):
    ...     texts: str = path_option("texts", help="text file, one text per line")   # required: no default
    ...     batch_size: int = batch_size_option()
    ...     def __post_init__(self):
    ...         super().__post_init__()
    ...         check_int(self, "batch_size", low=1)        # "--batch-size: expected an integer >= 1, got 0"

Every message names the option as typed on the command line (`--batch-size`, not `batch_size`). Field
metadata says what a path option is (`texts`, `file`, `dir`, `model`, `tokenizer`, `adapter`, `splice`,
`adapter_method`, `out_dir`, `out_file`, `resumable_dir`), which `stitch.cli.preflight` checks before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from stitch.config import Config, option
from stitch.kinds import DTYPES

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
BATCH_HELP = "texts (or prompts) that go through the models together"


def flag(name: str) -> str:
    """The command-line spelling of a config key: `source_model` → `--source-model`."""
    return "--" + name.replace("_", "-")


def config_beside(file: str | Path) -> Path:
    """Where the config of a single-file artifact goes: `<stem>.config.yaml` in the same directory
    (a shared `config.yaml` would be overwritten by the next command writing to that directory)."""
    file = Path(file)
    return file.with_name(file.stem + ".config.yaml")


def path_option(role: str, default: Any = dataclasses.MISSING, *, help: str):
    """A field naming a file, directory or model; `role` tells the preflight what to check."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": None, "path": role})


def model_option(role: str, default: Any = dataclasses.MISSING):
    """The source (A) or target (B) model field: a hub id or a local directory."""
    letter = {"source": "A", "target": "B"}[role]
    return path_option("model", default, help=f"{role} model {letter}: hub id or local directory")


def source_layer_option(default: Any = dataclasses.MISSING):
    return option(default, help="A's layer N (0 = embeddings, L = last block's output)")


def target_layer_option():
    return option(None, help="B's layer M (default: the source layer)")


def dtype_option():
    return option("auto", choices=DTYPES, help="weights dtype: auto (as saved), float32, bfloat16, float16")


def device_option():
    return option("auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps")


def batch_size_option(default: int = 8, help: str = BATCH_HELP):
    return option(default, help=help)


def progress_option():
    return option(True, help="show progress bars on stderr (--no-progress: none)")


def overwrite_option():
    return option(False, help="replace the outputs of an earlier run (default: refuse to)")


def check_int(config, name: str, low: int | None = None, high: int | None = None) -> None:
    """`config.<name>` is an integer in [low, high] (None allowed when it is the field's default)."""
    value = getattr(config, name)
    if value is None and _default(config, name) is None:
        return
    valid = _range_text("an integer", low, high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag(name)}: expected {valid}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{flag(name)}: expected {valid}, got {value}")


def check_float(config, name: str, low: float | None = None, *, open_low: bool = False) -> None:
    value = getattr(config, name)
    if value is None and _default(config, name) is None:
        return
    valid = f"a finite number {'>' if open_low else '>='} {low}" if low is not None else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{flag(name)}: expected {valid}, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        raise ValueError(f"{flag(name)}: expected {valid}, got {value}")


def check_nonempty(config, name: str) -> None:
    value = getattr(config, name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{flag(name)}: expected a non-empty path or name, got {value!r}")


def check_device(device: str) -> None:
    """The spelling of `--device`; whether that device exists is the preflight's business."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"--device: {device!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")


def _range_text(what: str, low, high) -> str:
    if low is not None and high is not None:
        return f"{what} in [{low}, {high}]"
    if low is not None:
        return f"{what} >= {low}"
    return what


def _default(config, name: str):
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    return field.default


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelPairConfig(Config):
    """The options every two-model command shares: models A and B, their dtype and device."""

    source_model: str = model_option("source")
    target_model: str = model_option("target")
    dtype: str = dtype_option()
    device: str = device_option()

    def __post_init__(self):
        for name in ("source_model", "target_model"):
            check_nonempty(self, name)
        check_device(self.device)
