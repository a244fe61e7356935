"""Checks a command's options against the world before anything loads: files, outputs, devices, models.

    >>> preflight(config)          # raises ValueError naming the option; imports no model code

For every path option (see `stitch.cli.options.path_option`): text files exist and hold texts, tokenizer
and model directories exist (a hub id must be cached when HF_HUB_OFFLINE is set), adapters are
safetensors (never pickle), outputs are not clobbered without --overwrite. A device other than `auto` and
`cpu` must be available (torch is imported for that, lazily: it says whether CUDA exists). Then the
models' `config.json` (no weights) gives their depth and width for `config.check_models(a, b)`, and every
saved adapter the command reads (`--adapter FILE`, the one inside `--splice DIR`) must map A's width to B's:
its widths come from its safetensors header, read as bytes (no tensor is loaded). A width that cannot be
read this way (no config.json, an unknown architecture's keys, a hub id not in the cache) is not checked
here; the command's own check after loading still catches it. `stitch train --out DIR` holding checkpoints
(a resumed or extended run) is checked the same way: the newest checkpoint whose trainer state and adapter
verify against its manifest gives the adapter's widths (its header) and the run fields it was written with,
which must equal this run's (`stitch.training.identity`); a checkpoint that cannot be read so is left to
the resume after loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

from stitch.checks import check_device
from stitch.cli.options import flag
from stitch.cli.saved import (
    ADAPTER_WEIGHTS,
    CHECKPOINTS,
    SPLICE_CONFIG,
    adapter_weights,
    check_resume,
    checkpoints_to_resume,
    read_checkpoint,
    read_safetensors_metadata,
)
from stitch.cli.texts import read_texts
from stitch.kinds import ADAPTER_METHODS

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PROBE = {"model": "config.json", "tokenizer": "tokenizer_config.json"}  # a file every such repo has
_DEPTH_KEYS, _WIDTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers"), ("hidden_size", "n_embd", "d_model")


class ModelShape(NamedTuple):
    """What a model's config.json says, read without weights (None: not known before loading)."""

    n_layers: int | None = None
    d_model: int | None = None


def preflight(config) -> dict:
    """Check every option of `config`; returns {field: what was read} (texts, model shapes, splice records)."""
    found = {}
    for field in dataclasses.fields(config):
        role, value = field.metadata.get("path"), getattr(config, field.name)
        if role is not None and value is not None:
            found[field.name] = _CHECKS[role](field.name, value)
    _check_outputs(config)
    if hasattr(config, "device"):
        check_device_available(config.device)
    if hasattr(config, "check_models"):
        a, b = _shapes(config, found)
        config.check_models(a, b)
        check_adapter_widths(config, found, a, b)
    check_resume(config, found)
    _check_counts(config, found)
    return found


def _texts(name: str, path: str) -> list[str] | None:
    if str(path).startswith("hf:"):  # a hub dataset is read when the command runs, not to validate it
        return None
    return read_texts(name, path)


def _existing_dir(what: str):
    def check(name: str, path: str):
        if Path(path).is_file():
            raise ValueError(f"{flag(name)}: {path!r} is a file; expected a {what} directory or a hub id")
        if Path(path).is_dir():
            return _read_shape(Path(path))
        _check_hub_id(name, path, what)
        return _cached_shape(path)

    return check


def _check_hub_id(name: str, path: str, what: str) -> None:
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or not _HUB_ID.match(path)
    if looks_local:
        raise ValueError(f"{flag(name)}: no {what} directory at {path!r} (and it is not a hub id)")
    if os.environ.get("HF_HUB_OFFLINE") and _cached_file(path, _PROBE[what]) is None:
        raise ValueError(
            f"{flag(name)}: {path!r} is not a local directory and not in the hub cache (HF_HUB_OFFLINE is set)"
        )


def _cached_file(repo: str, filename: str):
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "unknown"  # cannot tell: let loading decide
    hit = try_to_load_from_cache(repo, filename)
    return hit if isinstance(hit, str) else None


def _cached_shape(repo: str) -> ModelShape:
    hit = _cached_file(repo, "config.json")
    return _read_shape(Path(hit).parent) if isinstance(hit, str) and hit != "unknown" else ModelShape()


def _read_shape(directory: Path) -> ModelShape:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelShape()
    data = {**data.get("text_config", {}), **data}
    depth = next((data[k] for k in _DEPTH_KEYS if isinstance(data.get(k), int)), None)
    width = next((data[k] for k in _WIDTH_KEYS if isinstance(data.get(k), int)), None)
    return ModelShape(depth, width)


def _adapter_method(name: str, value: str) -> dict | None:
    """A way to make adapters (`stitch.kinds.ADAPTER_METHODS`), else the path of a saved adapter."""
    return None if value in ADAPTER_METHODS else _adapter(name, value)


def _adapter(name: str, path: str) -> dict:
    weights = adapter_weights(path)
    if not weights.is_file():
        raise ValueError(f"{flag(name)}: no adapter at {path!r} (expected {weights})")
    return read_safetensors_metadata(name, weights)


def _splice(name: str, path: str) -> dict:
    record_path = Path(path) / SPLICE_CONFIG
    if not record_path.is_file():
        raise ValueError(f"{flag(name)}: no saved splice at {path!r} (expected {record_path})")
    try:
        return json.loads(record_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{flag(name)}: {record_path} is not JSON: {err}") from None


def _out_dir(name: str, path: str) -> None:
    if Path(path).is_file():
        raise ValueError(f"{flag(name)}: {path!r} is an existing file; expected a directory to write into")


def _run_dir(name: str, path: str) -> None:
    if not Path(path).is_dir():
        raise ValueError(f"{flag(name)}: no directory at {path!r}; expected a directory a stitch command wrote")


def _resumable_dir(name: str, path: str) -> dict | None:
    _out_dir(name, path)
    return read_checkpoint(Path(path) / CHECKPOINTS)


def _out_file(name: str, path: str) -> None:
    if Path(path).is_dir():
        raise ValueError(f"{flag(name)}: {path!r} is a directory; expected a file name")


def _out_adapter(name: str, path: str) -> None:
    (_out_file if Path(path).suffix == ".safetensors" else _out_dir)(name, path)


_CHECKS = {
    "texts": _texts,
    "model": _existing_dir("model"),
    "tokenizer": _existing_dir("tokenizer"),
    "adapter": _adapter,
    "adapter_method": _adapter_method,
    "splice": _splice,
    "out_dir": _out_dir,
    "out_file": _out_file,
    "out_adapter": _out_adapter,
    "resumable_dir": _resumable_dir,
    "run_dir": _run_dir,
}


def _check_outputs(config) -> None:
    if getattr(config, "overwrite", False) or not hasattr(config, "outputs"):
        return
    existing = [str(p) for p in config.outputs() if p.exists()]
    if existing:
        raise ValueError(
            f"--out: {config.out!r} holds the outputs of an earlier run ({', '.join(existing)}); "
            "give another --out, or --overwrite to replace them"
        )


def check_device_available(device: str) -> None:
    """`--device cuda` on a machine without CUDA fails here, in one line, before anything loads
    (`stitch.checks.check_device` imports torch lazily: only a named device needs asking)."""
    if device != "auto":
        check_device("--device", device)


def _shapes(config, found: dict) -> tuple[ModelShape, ModelShape]:
    shapes = []
    for role in ("source", "target"):
        shape = found.get(f"{role}_model")
        if shape is None and "splice" in found:
            shape = _splice_shape(found["splice"], "A" if role == "source" else "B")
        shapes.append(shape or ModelShape())
    return shapes[0], shapes[1]


def _splice_shape(record: dict, key: str) -> ModelShape:
    model = record.get("models", {}).get(key, {})
    return ModelShape(model.get("n_layers"), model.get("d_model"))


def check_adapter_widths(config, found: dict, a: ModelShape, b: ModelShape) -> None:
    """Every saved adapter maps A's d_model to B's, as far as the header and the configs tell (an unknown
    width on either side is left to the check after loading)."""
    need = (a.d_model, b.d_model)
    for name, weights, record in _saved_adapters(config, found):
        got = (record.get("d_source"), record.get("d_target"))
        if any(isinstance(g, int) and isinstance(n, int) and g != n for g, n in zip(got, need, strict=True)):
            raise ValueError(
                f"{flag(name)}: got {weights} mapping widths {got[0]} → {got[1]}; valid: "
                f"{_width(need[0])} → {_width(need[1])}, the d_model of {_models_named(config)}"
            )


def _saved_adapters(config, found: dict) -> list[tuple[str, Path, dict]]:
    """(option, weights file, header record) of every saved adapter `config` reads, a saved splice's included."""
    saved = []
    for field in dataclasses.fields(config):
        if field.metadata.get("path") in ("adapter", "adapter_method") and found.get(field.name):
            saved.append((field.name, adapter_weights(getattr(config, field.name)), found[field.name]))
    if "splice" in found and (weights := Path(config.splice) / ADAPTER_WEIGHTS).is_file():
        saved.append(("splice", weights, read_safetensors_metadata("splice", weights)))
    for name, checkpoint in checkpoints_to_resume(config, found):  # a resumed run's adapter
        saved.append((name, checkpoint["path"] / ADAPTER_WEIGHTS, checkpoint["adapter"]))
    return saved


def _width(value) -> str:
    return str(value) if isinstance(value, int) else "any"


def _models_named(config) -> str:
    """How the error names the models whose widths it quotes: the options given, else the saved splice's."""
    names = []
    for role, key in (("source_model", "A"), ("target_model", "B")):
        path = getattr(config, role, None)
        names.append(f"{flag(role)} {path}" if path is not None else f"the saved splice's model {key}")
    return f"{names[0]} → {names[1]} (their config.json)"


def _check_counts(config, found: dict) -> None:
    """Options bounded by how many texts there are (a step of `stitch train` takes whole batches)."""
    texts = found.get("train_texts")
    if texts is not None and hasattr(config, "steps") and config.batch_size > len(texts):
        raise ValueError(
            f"--batch-size: {config.batch_size} texts per step, but --train-texts holds {len(texts)}; "
            f"valid: 1..{len(texts)}"
        )
