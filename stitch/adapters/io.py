"""Save and load adapters as safetensors plus a JSON config; never pickle.

    >>> save_adapter(ad, "runs/l16/adapter.safetensors", source_layer=16, target_layer=16,
    ...              source_model="meta-llama/Llama-3.1-8B", target_model="mistralai/Mistral-7B-v0.3",
    ...              alignment="target")
    >>> ad = load_adapter("runs/l16/adapter.safetensors")      # the same module, same dtype, exact
    >>> read_adapter_record("runs/l16/adapter.safetensors")["metadata"]["source_layer"]

A path ending in `.safetensors` names the weights file and its config goes beside it as `<stem>.json`;
any other path is a directory holding `adapter.safetensors` and `adapter_config.json`.
The config (kind, widths, constructor arguments, tensor shapes, metadata, library versions) is also
embedded in the safetensors header, which is what `load_adapter` reads: the weights file alone is
always self-describing, and each file is written atomically (temp file in the same directory, fsync,
then `os.replace`), so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from stitch.adapters.base import Adapter, adapter_class
from stitch.files import write_atomic

FORMAT, FORMAT_VERSION, HEADER_KEY = "stitch-adapter", 1, "stitch_adapter"
WEIGHTS_NAME, CONFIG_NAME = "adapter.safetensors", "adapter_config.json"
_VERSIONED = ("stitch", "torch", "safetensors", "transformers")
_MAX_HEADER = 100_000_000


def adapter_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, JSON config file) for a `.safetensors` path or a directory."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":  # "X.SAFETENSORS" is a file too, never a directory
        return path, path.with_suffix(".json")
    return path / WEIGHTS_NAME, path / CONFIG_NAME


def save_adapter(adapter: Adapter, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write `adapter` and JSON-serialisable `metadata` atomically; returns the weights path."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be a stitch.adapters.Adapter, got {type(adapter).__name__}")
    record = adapter_record(adapter, metadata)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    weights, config = adapter_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(record, sort_keys=True)
    write_atomic(weights, safetensors.torch.save(tensors, metadata={HEADER_KEY: header}))
    write_atomic(config, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return weights


def adapter_record(adapter: Adapter, metadata: dict[str, Any]) -> dict[str, Any]:
    """The JSON config saved with an adapter."""
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"metadata[{key!r}] must be JSON-serialisable, got {type(value).__name__}: {err}"
            ) from None
    state = adapter.state_dict()
    first = next(iter(state.values()), None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": adapter.kind,
        "d_source": adapter.d_source,
        "d_target": adapter.d_target,
        "config": adapter.config(),
        "n_parameters": adapter.n_parameters(),
        "dtype": None if first is None else str(first.dtype),
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "metadata": metadata,
        "versions": library_versions(),
    }


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an adapter file depends on ('not installed' otherwise)."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def load_adapter(path: str | os.PathLike, device: str | torch.device = "cpu") -> Adapter:
    """Rebuild the adapter saved at `path` (a `.safetensors` file or a directory), exactly as saved."""
    weights, _ = adapter_paths(path)
    record = read_adapter_record(weights)
    try:
        adapter = adapter_class(record["kind"])(**record["config"])
    except TypeError as err:
        raise ValueError(
            f"{weights}: config {record['config']} does not build a {record['kind']!r} adapter: {err}"
        ) from None
    try:
        tensors = safetensors.torch.load_file(weights, device=str(device))
    except Exception as err:  # safetensors raises its own error type; name the file and the cause
        raise ValueError(f"{weights}: corrupt safetensors file: {err}") from None
    _check_tensors(weights, adapter, tensors)
    adapter.load_state_dict(tensors, strict=True, assign=True)  # assign keeps the saved dtype bit-exact
    return adapter.to(device)


def _check_tensors(weights: Path, adapter: Adapter, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if set(expected) != set(found):
        raise ValueError(
            f"{weights}: tensors {sorted(found)} do not match a {adapter.kind} adapter "
            f"{adapter.config()}, which needs {sorted(expected)}"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise ValueError(
                f"{weights}: tensor {name!r} has shape {found[name]} in the file, but a "
                f"{adapter.kind} adapter {adapter.config()} needs {shape}"
            )


def read_adapter_record(path: str | os.PathLike) -> dict[str, Any]:
    """The saved config of an adapter file (kind, widths, metadata, versions) without loading weights."""
    weights, _ = adapter_paths(path)
    header = _read_header(weights)
    text = header.get("__metadata__", {}).get(HEADER_KEY)
    if text is None:
        raise ValueError(
            f"{weights}: a safetensors file without a stitch adapter config; "
            "save adapters with stitch.save_adapter"
        )
    record = json.loads(text)
    if record.get("format") != FORMAT or record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{weights}: format {record.get('format')!r} version {record.get('format_version')}"
            f" is not readable here (expected {FORMAT!r} <= {FORMAT_VERSION}); upgrade stitch"
        )
    return record


def _read_header(weights: Path) -> dict[str, Any]:
    if not weights.is_file():
        raise FileNotFoundError(f"no adapter file at {weights}")
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        head = f.read(9)
        if size < 9:
            _refuse_pickle(weights, head)
            raise ValueError(f"{weights}: truncated file ({size} bytes; a safetensors header needs >= 9)")
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or n > _MAX_HEADER:  # not safetensors; a pickle gets its own message
            _refuse_pickle(weights, head)
            raise ValueError(
                f"{weights}: not a safetensors file (bad header); adapters are saved as safetensors"
            )
        if 8 + n > size:
            raise ValueError(f"{weights}: truncated file: header needs {8 + n} bytes, file has {size}")
        f.seek(8)
        header = _parse_header(weights, f.read(n))
    _check_data_extent(weights, header, size - 8 - n)
    return header


def _refuse_pickle(weights: Path, head: bytes) -> None:
    # a torch.save file is a zip archive ("PK") around a pickle; a bare pickle starts with PROTO 0x80 + version
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise ValueError(
            f"{weights}: this is a pickle / torch.save file; stitch never unpickles adapters "
            "(unpickling runs arbitrary code). Load it yourself from a trusted source and "
            "re-save it with stitch.save_adapter"
        )


def _parse_header(weights: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{weights}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{weights}: corrupt safetensors header (not a JSON object)")
    return header


def _check_data_extent(weights: Path, header: dict[str, Any], available: int) -> None:
    try:
        ends = [int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f"{weights}: corrupt safetensors header (bad data_offsets)") from None
    needed = max(ends, default=0)
    if needed > available:
        raise ValueError(
            f"{weights}: truncated file: tensors need {needed} bytes of data, only {available} are present"
        )
