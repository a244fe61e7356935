"""Training checkpoints: adapter, optimizer state, step and RNG, written so that a crash never loses one.

    >>> save_checkpoint("runs/t/checkpoints", 300, adapter, optimizer, state={"history": [...]}, keep=2,
    ...                 run="9f2c...")                          # run: what the run is (a config hash)
    >>> path = latest_checkpoint("runs/t/checkpoints")            # None when there is none yet
    >>> state = load_checkpoint(path, adapter, optimizer)          # in place; state["step"] == 300

A checkpoint is a directory `step-00000300/` holding `adapter.safetensors` (+ `adapter_config.json`, via
`stitch.save_adapter`), `optimizer.safetensors` (the optimizer's tensors and the torch RNG states),
`trainer_state.json` (step, write serial, run id, optimizer hyper-parameters, Python RNG, caller state) and
`manifest.json` (the size and SHA-256 of every one of those files, and a SHA-256 of that list itself).
It is assembled in a temporary directory and renamed into place in one step; `latest.json` then names it,
for people and tools. Loading checks the manifest and every file against it, so a truncated, altered or
edited checkpoint (trainer_state.json included) is refused. Non-finite adapter or optimizer values are
never written. Never pickle: no `torch.save`, no `torch.load`.

Finding the checkpoint to resume does not depend on `latest.json`: `latest_checkpoint` takes the most
recently written `step-*` directory that passes verification, falling back to the previous one (with a
warning) when the newest is damaged, and refuses a directory holding checkpoints of different runs.
Pruning keeps the `keep` most recently written verified checkpoints, the one just written always among them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from stitch.adapters import Adapter, load_adapter, save_adapter
from stitch.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from stitch.files import make_temp_dir, write_atomic
from stitch.training.manifest import (
    MANIFEST_NAME,
    check_file,
    load_json,
    read_manifest,
    verify,
    write_manifest,
)
from stitch.training.snapshot import (
    optimizer_state,
    optimizer_tensors,
    python_rng,
    restore_rng,
    rng_tensors,
)

FORMAT, FORMAT_VERSION = "stitch-checkpoint", 2
STATE_NAME, TENSORS_NAME, POINTER_NAME = "trainer_state.json", "optimizer.safetensors", "latest.json"
REQUIRED = (WEIGHTS_NAME, CONFIG_NAME, TENSORS_NAME, STATE_NAME)  # what every manifest must list
_TMP_PREFIX, _STEP = ".tmp-", re.compile(r"^step-(\d+)$")


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    adapter: Adapter,
    optimizer: torch.optim.Optimizer,
    *,
    state: dict[str, Any] | None = None,
    keep: int | None = None,
    run: str | None = None,
    **adapter_metadata: Any,
) -> Path:
    """Write checkpoint `step` of run `run` under `directory`, point `latest.json` at it, keep the `keep`
    most recently written. Refuses non-finite values and a directory holding another run's checkpoints."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep: expected an integer >= 1 or None, got {keep!r}")
    tensors, groups = optimizer_tensors(optimizer)
    _check_finite(step, adapter, tensors)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = _scan(directory)
    _check_one_run(directory, [*existing, _Entry(directory, step, {"run": run})])
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "run": run}
    record.update(serial=1 + max((e.serial for e in existing), default=0))
    record.update(param_groups=groups, python_rng=python_rng(), state=state or {})
    text = _strict_json(record, "state") + "\n"
    final = directory / f"step-{step:08d}"
    tmp = make_temp_dir(directory, _TMP_PREFIX)  # mkdtemp's 0700 would hide the run from its group
    try:
        save_adapter(adapter, tmp, step=step, **adapter_metadata)
        write_atomic(tmp / TENSORS_NAME, safetensors.torch.save({**tensors, **rng_tensors()}))
        write_atomic(tmp / STATE_NAME, text)
        write_manifest(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(directory / POINTER_NAME, json.dumps({"step": step, "path": final.name, "run": run}) + "\n")
    _prune(directory, keep, final)
    return final


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The most recently written checkpoint under `directory` that passes verification (`latest.json` is not
    needed), or None when there is none. A damaged newest one is skipped with a warning; checkpoints of
    different runs, or checkpoints none of which verifies, are an error rather than a fresh start."""
    directory = Path(directory)
    entries = _scan(directory, keep_damaged=True)
    _check_one_run(directory, [e for e in entries if e.record is not None])
    failures = [f"{e.path.name}: {e.error}" for e in entries if e.record is None]
    for entry in sorted((e for e in entries if e.record is not None), key=lambda e: -e.serial):
        try:
            read_record(entry.path)
        except ValueError as err:
            failures.append(str(err))
            continue
        if failures:
            warnings.warn(
                f"{directory}: skipped checkpoints that fail verification ({'; '.join(failures)}); "
                f"resuming from {entry.path.name}",
                stacklevel=2,
            )
        return entry.path
    if failures or (directory / POINTER_NAME).exists():
        found = "; ".join(failures) or f"{POINTER_NAME} names a checkpoint, but no step-* directory exists"
        raise ValueError(
            f"{directory}: no checkpoint passes verification ({found}); move the directory aside to start "
            "afresh, or restore a checkpoint into it"
        )
    return None


def load_checkpoint(
    path: str | os.PathLike, adapter: Adapter, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify checkpoint `path`, load it into `adapter` (and `optimizer`) in place, restore the RNGs,
    and return its record (`step`, `run`, `state`, ...). Refuses truncated, altered or mismatched checkpoints."""
    path = Path(path)
    record = read_record(path)
    _load_adapter_into(path, adapter)
    tensors = _load_tensors(path / TENSORS_NAME)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state(tensors, record["param_groups"]))
    restore_rng(tensors, record["python_rng"])
    return record


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's `trainer_state.json`, after checking the manifest and every file against it."""
    path = Path(path)
    _check_format(path)
    verify(path, REQUIRED)
    return _parse_state(path)


@dataclass
class _Entry:
    path: Path
    step: int
    record: dict[str, Any] | None  # trainer_state.json once its manifest entry checked; None if damaged
    error: str = ""

    @property
    def serial(self) -> int:
        return self.record.get("serial", 0) if self.record else -1


def _scan(directory: Path, keep_damaged: bool = False) -> list[_Entry]:
    """The `step-*` checkpoints under `directory` with their (manifest-checked) trainer state; cheap:
    only trainer_state.json is hashed. Damaged ones are listed (record None) when `keep_damaged`."""
    entries = []
    for path in sorted(directory.glob("step-*")):
        match = _STEP.match(path.name)
        if match is None or not path.is_dir():
            continue
        try:
            _check_format(path)
            check_file(path / STATE_NAME, read_manifest(path, REQUIRED)[STATE_NAME])
            entries.append(_Entry(path, int(match.group(1)), _parse_state(path)))
        except ValueError as err:
            if keep_damaged:
                entries.append(_Entry(path, int(match.group(1)), None, str(err)))
    return entries


def _check_one_run(directory: Path, entries: list[_Entry]) -> None:
    runs = {e.record.get("run") for e in entries}
    if len(runs) > 1:
        where = {e.record.get("run"): e.path.name for e in entries}
        listed = ", ".join(f"run {run!r} ({name})" for run, name in sorted(where.items(), key=str))
        raise ValueError(
            f"{directory}: checkpoints of different runs ({listed}) would be mixed; keep one run's step-* "
            "directories there and move the others away, or use another directory"
        )


def _check_format(path: Path) -> None:
    if not (path / MANIFEST_NAME).is_file() and (path / STATE_NAME).is_file():
        raise ValueError(
            f"{path}: written by an older stitch (checkpoint format 1, whose {STATE_NAME} is not verified); "
            "it cannot be resumed safely: start afresh in a new directory"
        )


def _parse_state(path: Path) -> dict[str, Any]:
    file = path / STATE_NAME
    record = load_json(file)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{file}: not a {FORMAT} record")
    if record.get("format_version", 0) != FORMAT_VERSION:
        raise ValueError(f"{file}: format version {record.get('format_version')}; valid: {FORMAT_VERSION}")
    return record


def _check_finite(step: int, adapter: Adapter, tensors: dict[str, torch.Tensor]) -> None:
    named = {**{f"adapter.{k}": v for k, v in adapter.state_dict().items()}, **tensors}
    bad = [k for k, v in named.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"step {step}: the adapter or optimizer holds non-finite values ({', '.join(bad[:4])}); "
            "such a checkpoint is never written, and the earlier ones are kept"
        )


def _strict_json(record: dict[str, Any], name: str) -> str:
    try:
        return json.dumps(record, indent=1, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"{name}: holds NaN or infinity, which JSON cannot represent; store None (null) instead"
        ) from None


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


def _prune(directory: Path, keep: int | None, written: Path) -> None:
    """Remove temporary directories left by a killed save, then all but the `keep` most recently written
    checkpoints that pass verification — `written` (just saved, so not re-hashed) always first."""
    for stale in directory.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep is None:
        return
    kept = [written]
    for entry in sorted(_scan(directory, keep_damaged=True), key=lambda e: -e.serial):
        if entry.path == written:
            continue
        if len(kept) < keep and entry.record is not None and _verifies(entry.path):
            kept.append(entry.path)
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(entry.path)


def _verifies(path: Path) -> bool:
    try:
        read_record(path)
    except ValueError:
        return False
    return True
