"""What the subcommands' run functions share: loading models and tokenizers, writing JSON and run configs.

    >>> A, B = load_models(config)                       # from config.source_model / target_model
    >>> save_run_config(config, config_beside("out/gen.jsonl"), A)   # out/gen.config.yaml, replayable

Only run modules import this (it imports torch); the option fields and checks live in
`stitch.cli.options` and `stitch.cli.configs`, which the parser imports without torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

import stitch
from stitch.adapters.io import library_versions
from stitch.cli.options import (  # noqa: F401  re-exported: the option helpers used to live here
    ModelPairConfig,
    config_beside,
    device_option,
    dtype_option,
    flag,
    model_option,
    option,
    source_layer_option,
    target_layer_option,
)
from stitch.cli.texts import read_texts  # noqa: F401  re-exported
from stitch.config import Config
from stitch.files import write_atomic
from stitch.models.loading import check_model_path, resolve_device, resolve_dtype

RUN_KEY = "stitch_run"  # stitch.cli.main.RUN_KEY


def load_model(name: str, path: str, dtype, device):
    """`stitch.load_model` on a hub id or local directory; a failure names the option and the path."""
    try:
        return stitch.load_model(path, dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{flag(name)}: could not load {path!r} as a model directory or hub id: {err}"
        ) from err


def load_models(config: ModelPairConfig):
    """(A, B) from `config.source_model` and `config.target_model` (one model when both are the same
    path: half the memory, and analyses take their self-comparison shortcuts), with dtype and device."""
    dtype, device = resolved(config)
    A = load_model("source_model", config.source_model, dtype, device)
    same = config.target_model == config.source_model
    return A, A if same else load_model("target_model", config.target_model, dtype, device)


def resolved(config) -> tuple[Any, Any]:
    """(torch dtype or None for "auto", torch device) of `config.dtype` and `config.device`."""
    dtype = None if config.dtype == "auto" else _checked("dtype", resolve_dtype, config.dtype)
    return dtype, _checked("device", resolve_device, config.device)


def _checked(name: str, resolve, value):
    """`resolve(value)`, its error re-worded to name the command-line option."""
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


def write_jsonl(path: str | Path, records) -> Path:
    """One UTF-8 JSON object per line, written atomically."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def as_ran(config: Config, *models) -> Config:
    """`config` with `dtype` and `device` set to what the loaded models actually use (not "auto")."""
    if not models or not hasattr(config, "dtype"):
        return config
    dtypes = {str(m.dtype).removeprefix("torch.") for m in models}
    device = str(models[0].device)
    dtype = dtypes.pop() if len(dtypes) == 1 else config.dtype  # "auto" kept when A and B differ
    return dataclasses.replace(config, dtype=dtype, device=device)


def save_run_config(config: Config, path: str | Path, *models) -> Path:
    """The config that ran, as YAML: absolute paths, the dtype and device in use, library versions.
    `stitch <command> --config PATH` replays it from any directory (the `stitch_run` key is ignored)."""
    data = as_ran(config, *models).to_dict()
    data[RUN_KEY] = {"versions": library_versions(), "cwd": os.getcwd()}
    text = yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True)
    return write_atomic(path, text)


def _plain(value):
    """Tuples as lists, so the YAML holds only plain types (`yaml.safe_load` reads it back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_splice(config):
    """The splice saved at `config.splice` (`Splice.from_pretrained`); --source-model / --target-model,
    when given, are loaded and checked against the saved identities, else the saved ones are loaded."""
    dtype, device = resolved(config)
    given = [
        None if path is None else load_model(name, path, dtype, device)
        for name, path in (("source_model", config.source_model), ("target_model", config.target_model))
    ]
    try:
        return stitch.Splice.from_pretrained(config.splice, A=given[0], B=given[1], dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        raise ValueError(f"--splice: {err}") from err


def splice_models(config):
    """(A, B) of the splice saved at `config.splice`."""
    splice = load_splice(config)
    return splice.A, splice.B
