"""Training checkpoints: adapter, optimizer state, step and RNG, written so that a crash never loses one.

    >>> save_checkpoint("runs/t/checkpoints", 300, adapter, optimizer, state={"history": [...]}, keep=2)
    >>> path = latest_checkpoint("runs/t/checkpoints")            # None when there is none yet
    >>> state = load_checkpoint(path, adapter, optimizer)          # in place; state["step"] == 300

A checkpoint is a directory `step-00000300/` holding `adapter.safetensors` (+ `adapter_config.json`, via
`stitch.save_adapter`), `optimizer.safetensors` (the optimizer's tensors and the torch RNG states) and
`trainer_state.json` (step, optimizer hyper-parameters, Python RNG, caller state, and the size and SHA-256
of every other file). It is assembled in a temporary directory and renamed into place in one step, and
only then does `latest.json` (written atomically) point at it: a crash mid-save leaves the previous
checkpoint and the pointer untouched. Loading checks every file against the recorded size and hash, so a
truncated or altered checkpoint is refused. Never pickle: no `torch.save`, no `torch.load`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from stitch.adapters import Adapter, load_adapter, save_adapter
from stitch.files import make_temp_dir, write_atomic

FORMAT, FORMAT_VERSION = "stitch-checkpoint", 1
STATE_NAME, TENSORS_NAME, POINTER_NAME = "trainer_state.json", "optimizer.safetensors", "latest.json"
_TMP_PREFIX = ".tmp-"


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    adapter: Adapter,
    optimizer: torch.optim.Optimizer,
    *,
    state: dict[str, Any] | None = None,
    keep: int | None = None,
    **adapter_metadata: Any,
) -> Path:
    """Write checkpoint `step` under `directory`, point `latest.json` at it, keep the newest `keep`."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep: expected an integer >= 1 or None, got {keep!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = make_temp_dir(directory, _TMP_PREFIX)  # mkdtemp's 0700 would hide the run from its group
    try:
        save_adapter(adapter, tmp, step=step, **adapter_metadata)
        tensors, groups = _optimizer_tensors(optimizer)
        write_atomic(tmp / TENSORS_NAME, safetensors.torch.save({**tensors, **_rng_tensors()}))
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step}
        record.update(param_groups=groups, python_rng=_python_rng(), state=state or {}, files=_digests(tmp))
        write_atomic(tmp / STATE_NAME, json.dumps(record, indent=1) + "\n")
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(directory / POINTER_NAME, json.dumps({"step": step, "path": final.name}) + "\n")
    _prune(directory, keep)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`; an older save of the same step is moved aside first, since a
    directory cannot replace a non-empty one."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = make_temp_dir(final.parent, _TMP_PREFIX)
    os.replace(final, old / final.name)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint `latest.json` points at, or None when `directory` holds no checkpoint yet."""
    pointer = Path(directory) / POINTER_NAME
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{pointer}: corrupt checkpoint pointer ({err}); delete it to start afresh"
        ) from None
    path = pointer.parent / name
    if not path.is_dir():
        raise ValueError(f"{pointer}: points at {name!r}, which does not exist")
    return path


def load_checkpoint(
    path: str | os.PathLike, adapter: Adapter, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify checkpoint `path`, load it into `adapter` (and `optimizer`) in place, restore the RNGs,
    and return its record (`step`, `state`, ...). Refuses truncated, altered or mismatched checkpoints."""
    path = Path(path)
    record = read_record(path)
    _load_adapter_into(path, adapter)
    tensors = _load_tensors(path / TENSORS_NAME)
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_state(tensors, record["param_groups"]))
    _restore_rng(tensors, record["python_rng"])
    return record


def read_record(path: Path) -> dict[str, Any]:
    """The checkpoint's `trainer_state.json`, after checking every file's size and SHA-256 against it."""
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise ValueError(f"{path}: not a checkpoint (no {STATE_NAME})")
    try:
        record = json.loads(state_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{state_file}: truncated or corrupt ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{state_file}: not a {FORMAT} record")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{state_file}: format version {record['format_version']} > {FORMAT_VERSION}")
    for name, expected in record["files"].items():
        _check_file(path / name, expected)
    return record


def _check_file(file: Path, expected: dict[str, Any]) -> None:
    if not file.is_file():
        raise ValueError(f"{file}: missing from the checkpoint")
    size = file.stat().st_size
    if size != expected["bytes"]:
        raise ValueError(
            f"{file}: truncated or altered: {size} bytes, the checkpoint recorded {expected['bytes']}"
        )
    if _sha256(file) != expected["sha256"]:
        raise ValueError(f"{file}: altered: its SHA-256 differs from the one the checkpoint recorded")


def _digests(directory: Path) -> dict[str, dict[str, Any]]:
    return {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != STATE_NAME and not f.name.startswith(".")
    }


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_adapter_into(path: Path, adapter: Adapter) -> None:
    saved = load_adapter(path, device=next(adapter.parameters(), torch.empty(0)).device)
    if (saved.kind, saved.config()) != (adapter.kind, adapter.config()):
        raise ValueError(
            f"{path}: holds a {saved.kind} adapter {saved.config()}, but training a {adapter.kind} "
            f"adapter {adapter.config()}"
        )
    with torch.no_grad():  # in place: the optimizer and any DDP wrapper hold these very tensors
        for name, value in adapter.state_dict().items():
            value.copy_(saved.state_dict()[name])


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(file)
    except Exception as err:  # safetensors raises its own error type; name the file and the cause
        raise ValueError(f"{file}: corrupt safetensors file: {err}") from None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as flat tensors `optim.{param}.{key}`, and its param groups as JSON."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, json.loads(json.dumps(sd["param_groups"]))


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(tensors: dict[str, torch.Tensor], python_rng: list) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_rng
    random.setstate((version, tuple(internal), gauss))


def _prune(directory: Path, keep: int | None) -> None:
    """Remove all but the newest `keep` checkpoints, and temporary directories left by a killed save."""
    for stale in directory.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep is None:
        return
    for old in sorted(directory.glob("step-*"))[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old)
