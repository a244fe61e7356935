"""What makes two runs the same run (torch-free: `stitch train`'s preflight checks a checkpoint with it
before any model loads, `stitch.training.resume` again before loading the checkpoint).

    >>> identity = run_identity(config, texts)         # {"config": run fields, "texts_sha256": ...}
    >>> run_id(identity)                               # 16 hex digits: checkpoints of one run only
    >>> check_same_config("resume", path, saved["config"], identity["config"])   # ValueError with the diff
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from stitch.training.config import TrainConfig


def run_identity(config: TrainConfig, texts: list[str]) -> dict[str, Any]:
    """What a checkpoint must share with this run to continue it exactly."""
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return {"config": config.run_fields(), "texts_sha256": digest}


def run_id(identity: dict[str, Any]) -> str:
    """A digest of the run's identity: checkpoints of different runs never share a directory."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_same_run(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    if saved.get("texts_sha256") != current["texts_sha256"]:
        raise ValueError(
            f"resume: the checkpoint {path} was trained on different texts; use a new out directory"
        )
    check_same_config("resume", path, saved.get("config", {}), current["config"])


def check_same_config(name: str, path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse (naming `name`) when the run fields `old` of checkpoint `path` differ from this run's `new`."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{name}: the checkpoint {path} was written with a different config ({diffs}); "
            "use the same options, or a new out directory"
        )
