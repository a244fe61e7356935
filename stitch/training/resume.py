"""What makes two runs the same run, and continuing one from its latest checkpoint.

    >>> identity = run_identity(config, texts)         # {"config": run fields, "texts_sha256": ...}
    >>> run_id(identity)                               # 16 hex digits: checkpoints of one run only
    >>> step, history = resume_from(path, identity, group, optimizer, total=2000, allowed=config.resume)

A checkpoint continues a run only when the texts and every field that decides what a step computes are
the same (`TrainConfig.run_fields`); `FREE_ON_RESUME` fields (how long, how often, where it logs) may change,
so a finished run is extended with more steps or epochs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from stitch.training.checkpoint import load_checkpoint, read_record
from stitch.training.config import TrainConfig


def run_identity(config: TrainConfig, texts: list[str]) -> dict[str, Any]:
    """What a checkpoint must share with this run to continue it exactly."""
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return {"config": config.run_fields(), "texts_sha256": digest}


def run_id(identity: dict[str, Any]) -> str:
    """A digest of the run's identity: checkpoints of different runs never share a directory."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resume_from(path: Path, identity: dict[str, Any], group, optimizer, *, total: int, allowed: bool,
                directory: Path) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    """Load the checkpoint at `path` into `group` and `optimizer`; returns (its step, its history)."""
    if not allowed:
        raise ValueError(
            f"resume: False, but {directory} holds checkpoints of an earlier run; resume it "
            "(resume=True) or choose a new out directory"
        )
    check_same_run(path, read_record(path)["state"], identity)  # before loading: a clear diff
    record = load_checkpoint(path, group, optimizer)
    if record["step"] > total:
        raise ValueError(
            f"steps: the checkpoint {path} is at step {record['step']}, beyond this run's {total} "
            "steps; extend a run with more steps or epochs, never fewer"
        )
    return record["step"], record["state"]["history"]


def check_same_run(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    if saved.get("texts_sha256") != current["texts_sha256"]:
        raise ValueError(
            f"resume: the checkpoint {path} was trained on different texts; use a new out directory"
        )
    old, new = saved.get("config", {}), current["config"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"resume: the checkpoint {path} was written with a different config ({diffs}); "
            "use the same options, or a new out directory"
        )
