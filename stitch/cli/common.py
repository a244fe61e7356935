"""What every subcommand shares: option fields, reading texts, loading models, writing JSON and configs.

    >>> @dataclass(frozen=True)
    ... class MyConfig(Config):
    ...     texts: str = option(help="text file, one text per line")     # required: no default
    ...     batch_size: int = option(8, help="texts per forward")
    ...     dtype: str = dtype_option()
    >>> texts = read_texts("texts", config.texts)
    >>> A, B = load_models(config)                       # from config.source_model / target_model
    >>> save_config(config, config_beside("out/gen.jsonl"))       # out/gen.config.json

The command line builds each subcommand's flags from its config's fields: the annotation gives the type,
`option(..., help=, choices=)` the help text and the valid values (see `stitch.cli`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import stitch
from stitch.config import Config, option
from stitch.data import load_texts
from stitch.files import write_atomic
from stitch.models.loading import check_model_path, resolve_device, resolve_dtype


def model_option(role: str):
    """The source (A) or target (B) model field: a hub id or a local directory."""
    letter = {"source": "A", "target": "B"}[role]
    return option(help=f"{role} model {letter}: hub id or local directory")


def source_layer_option():
    return option(help="A's layer N (0 = embeddings, L = last block's output)")


def target_layer_option():
    return option(None, help="B's layer M (default: the source layer)")


def dtype_option():
    return option("auto", help="weights dtype: auto (as saved), float32, bfloat16, float16")


def device_option():
    return option("auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps")


def flag(name: str) -> str:
    """The command-line spelling of a config key: `source_model` → `--source-model`."""
    return "--" + name.replace("_", "-")


def read_texts(name: str, path: str, text_field: str = "text") -> list[str]:
    """Texts from `path` (`stitch.data.read_texts`: one per line, or `.jsonl` objects with a `text_field`),
    or `hf:DATASET[:CONFIG]` (`stitch.data.load_texts`); errors name the command-line option."""
    return load_texts(path, text_field=text_field, name=flag(name))


def load_model(name: str, path: str, dtype: str, device: str):
    """`stitch.load_model` on a hub id or local directory; a failure names the option and the path."""
    try:
        return stitch.load_model(path, dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{flag(name)}: could not load {path!r} as a model directory or hub id: {err}"
        ) from err


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelPairConfig(Config):
    """The options every two-model command shares: models A and B, their dtype and device."""

    source_model: str = model_option("source")
    target_model: str = model_option("target")
    dtype: str = dtype_option()
    device: str = device_option()


def load_models(config: ModelPairConfig):
    """(A, B) from `config.source_model` and `config.target_model` (one model when both are the same
    path: half the memory, and analyses take their self-comparison shortcuts), with dtype and device."""
    dtype = None if config.dtype == "auto" else _checked("dtype", resolve_dtype, config.dtype)
    device = _checked("device", resolve_device, config.device)
    A = load_model("source_model", config.source_model, dtype, device)
    same = config.target_model == config.source_model
    return A, A if same else load_model("target_model", config.target_model, dtype, device)


def _checked(name: str, resolve, value):
    """`resolve(value)`, its error re-worded to name the command-line option (checked before any loading)."""
    try:
        return resolve(value)
    except ValueError as err:
        raise ValueError(f"{flag(name)}: {str(err).removeprefix(f'{name}: ')}") from None


def load_tokenizer(name: str, path: str):
    """A tokenizer from a tokenizer or model directory, or a hub id; a failure names the option."""
    from transformers import AutoTokenizer

    check_model_path(flag(name), path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{flag(name)}: could not load a tokenizer from {path!r}: {err}") from err


def write_json(path: str | Path, data: Any) -> Path:
    """Indented UTF-8 JSON, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_config(config: Config, path: str | Path) -> Path:
    """The config actually used, as JSON; YAML is a superset of JSON, so `--config` reads it back."""
    return write_json(path, config.to_dict())


def config_beside(file: str | Path) -> Path:
    """Where the config of a single-file artifact goes: `<stem>.config.json` in the same directory
    (a shared `config.json` would be overwritten by the next command writing to that directory)."""
    file = Path(file)
    return file.with_name(file.stem + ".config.json")
