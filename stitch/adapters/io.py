"""Save and load adapters as safetensors plus a JSON config; never pickle.

    >>> save_adapter(ad, "runs/l16/adapter.safetensors", source_layer=16, target_layer=16,
    ...              source_model="meta-llama/Llama-3.1-8B", target_model="mistralai/Mistral-7B-v0.3",
    ...              alignment="target")
    >>> ad = load_adapter("runs/l16/adapter.safetensors")      # the same module, same dtype, exact
    >>> read_adapter_record("runs/l16/adapter.safetensors")["metadata"]["source_layer"]

A path ending in `.safetensors` (any case) names the weights file and its config goes beside it as `<stem>.json`;
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
from stitch.checks import check_device
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
    """Rebuild the adapter saved at `path` (a `.safetensors` file or a directory), exactly as saved.

    The header's claims are checked against each other before anything is allocated: the module is
    built on the meta device and its shapes compared with the header's tensor shapes, so a tiny file
    claiming huge widths is refused instead of allocating them.
    """
    device = check_device("device", device)
    weights, _ = adapter_paths(path)
    header = _read_header(weights)
    adapter = _build_on_meta(weights, _record(weights, header))
    _check_tensors(weights, adapter, _header_shapes(weights, header))
    try:
        tensors = safetensors.torch.load_file(weights, device="cpu")
    except Exception as err:  # safetensors raises its own error type; name the file and the cause
        raise ValueError(f"{weights}: corrupt safetensors file: {err}") from None
    _check_tensors(weights, adapter, {k: tuple(v.shape) for k, v in tensors.items()})
    adapter.load_state_dict(tensors, strict=True, assign=True)  # assign keeps the saved dtype bit-exact
    return adapter.to(device)


def _build_on_meta(weights: Path, record: dict[str, Any]) -> Adapter:
    """The saved architecture with shapes but no storage (its tensors are assigned from the file)."""
    try:
        cls = adapter_class(record["kind"])
        with torch.device("meta"):
            return cls(**record["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{weights}: config {record['config']} does not build a {record['kind']!r} adapter: {err}"
        ) from None


def _header_shapes(weights: Path, header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{weights}: corrupt safetensors header (tensor {name!r} has no valid shape)")
        shapes[name] = tuple(shape)
    return shapes


def _check_tensors(weights: Path, adapter: Adapter, found: dict[str, tuple[int, ...]]) -> None:
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
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
    return _record(weights, _read_header(weights))


def _record(weights: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The stitch record in a parsed header, its structure checked (a half-valid one is corrupt)."""
    metadata = header.get("__metadata__", {})
    text = metadata.get(HEADER_KEY) if isinstance(metadata, dict) else None
    if text is None:
        raise ValueError(
            f"{weights}: a safetensors file without a stitch adapter config; "
            "save adapters with stitch.save_adapter"
        )
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{weights}: corrupt stitch adapter config in the header ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{weights}: corrupt stitch adapter config in the header (not a JSON object)")
    version = record.get("format_version", 0)
    if record.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{weights}: format {record.get('format')!r} version {record.get('format_version')!r}"
            f" is not readable here (expected {FORMAT!r} <= {FORMAT_VERSION}); upgrade stitch"
        )
    if not isinstance(record.get("kind"), str) or not isinstance(record.get("config"), dict):
        raise ValueError(
            f"{weights}: corrupt stitch adapter config: needs a string 'kind' and an object 'config', "
            f"got kind={record.get('kind')!r}, config={record.get('config')!r}"
        )
    return record


def _read_header(weights: Path) -> dict[str, Any]:
    if not weights.is_file():
        raise FileNotFoundError(f"no adapter file at {weights}")
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        head = f.read(9)
        if size < 9:
            _refuse_pickle(weights, head, head[-1:])
            raise ValueError(f"{weights}: truncated file ({size} bytes; a safetensors header needs >= 9)")
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or n > _MAX_HEADER:  # not safetensors; a pickle gets its own message
            f.seek(-1, os.SEEK_END)
            _refuse_pickle(weights, head, f.read(1))
            raise ValueError(
                f"{weights}: not a safetensors file (bad header); adapters are saved as safetensors"
            )
        if 8 + n > size:
            raise ValueError(f"{weights}: truncated file: header needs {8 + n} bytes, file has {size}")
        f.seek(8)
        header = _parse_header(weights, f.read(n))
    _check_data_extent(weights, header, size - 8 - n)
    return header


def _refuse_pickle(weights: Path, head: bytes, last: bytes) -> None:
    # A torch.save file is a zip archive ("PK") around a pickle; a bare pickle starts with PROTO 0x80 +
    # version and ends with STOP ("."). The end matters: the first bytes of a truncated safetensors file
    # are a header length, which can read 0x80 0x02 too.
    bare = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5 and last == b"."
    if head.startswith(b"PK\x03\x04") or bare:
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
