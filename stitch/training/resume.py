"""Continuing a run from its latest checkpoint.

    >>> identity = stitch.training.identity.run_identity(config, texts)   # what the run is
    >>> step, history = resume_from(path, identity, group, optimizer, total=2000, allowed=config.resume)

A checkpoint continues a run only when the texts and every field that decides what a step computes are
the same (`TrainConfig.run_fields`); `FREE_ON_RESUME` fields (how long, how often, where it logs) may change,
so a finished run is extended with more steps or epochs. What a run is lives in the torch-free
`stitch.training.identity`, with which `stitch train`'s preflight checks a checkpoint before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitch.training.checkpoint import load_checkpoint, read_record
from stitch.training.identity import check_same_run

__all__ = ["resume_from"]


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
