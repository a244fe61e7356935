"""What earlier runs saved, read without torch: a saved adapter's header, the checkpoint a rerun resumes.

    >>> read_safetensors_metadata("adapter", adapter_weights("runs/l16"))     # {"kind", "d_source", ...}
    >>> read_checkpoint(Path("runs/train/checkpoints"))                    # {"path", "state", "adapter"}
    >>> check_resume(config, found)        # a rerun on a checkpoint: same run fields, resume on, no fewer steps

The preflight (`stitch.cli.preflight`) reads these before any model loads. File names and the checkpoint
format are stitch's own (`stitch.adapters.io`, `stitch.splice.io`, `stitch.training.checkpoint`), repeated
here because those modules import torch; a test keeps them equal.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

from stitch.cli.options import flag
from stitch.training.identity import check_same_config
from stitch.training.manifest import check_file, load_json, read_manifest

SPLICE_CONFIG = "splice.json"  # stitch.splice.io.CONFIG_NAME (a test keeps them equal)
ADAPTER_WEIGHTS = "adapter.safetensors"  # stitch.adapters.io.WEIGHTS_NAME (a test keeps them equal)
# stitch.training's checkpoint directory, trainer state and (FORMAT, FORMAT_VERSION) (a test keeps them equal)
CHECKPOINTS, CHECKPOINT_STATE, CHECKPOINT_FORMAT = "checkpoints", "trainer_state.json", ("stitch-checkpoint", 2)


def adapter_weights(path: str | Path) -> Path:
    """The weights file of a saved adapter: the path itself when it ends in `.safetensors` (any case, as
    `stitch.adapters.io.adapter_paths` reads it), else `adapter.safetensors` inside that directory."""
    path = Path(path)
    return path if path.suffix.lower() == ".safetensors" else path / ADAPTER_WEIGHTS


def read_safetensors_metadata(name: str, weights: Path) -> dict:
    """The `__metadata__` of a safetensors header, read without torch; pickles are refused unread."""
    with open(weights, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        raw = f.read(size) if 0 < size < 100_000_000 else b""
    try:
        header = json.loads(raw)
    except ValueError:
        # only now a pickle signature means a pickle: a real header length can start with 0x80 too
        if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise ValueError(f"{flag(name)}: {weights} is a pickle / torch.save file; stitch never unpickles it") from None
        raise ValueError(f"{flag(name)}: {weights} is not a safetensors file") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    record = meta.get("stitch_adapter")
    return json.loads(record) if record else {}


def read_checkpoint(directory: Path) -> dict | None:
    """{"path", "state" (trainer_state.json), "adapter" (its header record)} of the most recently written
    checkpoint under `directory` whose trainer state and adapter verify against its manifest (as
    `stitch.training.checkpoint.latest_checkpoint` picks one, without torch); None when none does."""
    entries = []
    for path in directory.glob("step-*"):
        try:
            files = read_manifest(path, (CHECKPOINT_STATE, ADAPTER_WEIGHTS))
            check_file(path / CHECKPOINT_STATE, files[CHECKPOINT_STATE])
            state = load_json(path / CHECKPOINT_STATE)
            readable = isinstance(state["state"], dict)
            if readable and (state["format"], state["format_version"]) == CHECKPOINT_FORMAT:
                entries.append((int(state["serial"]), path, state, files))
        except (ValueError, OSError, KeyError, TypeError):
            continue  # damaged, of another format or not a checkpoint: left to the resume (which refuses it)
    for _, path, state, files in sorted(entries, key=lambda e: -e[0]):
        try:
            check_file(path / ADAPTER_WEIGHTS, files[ADAPTER_WEIGHTS])
            adapter = read_safetensors_metadata("out", path / ADAPTER_WEIGHTS)
            return {"path": path, "state": state, "adapter": adapter}
        except (ValueError, OSError, KeyError):
            continue
    return None


def check_resume(config, found: dict) -> None:
    """A checkpoint in `--out` is resumed only with `resume` on, the run fields it was written with (the
    models, layer pairs, kind, ...; `TrainConfig.run_fields`) and no fewer `--steps` than it has taken:
    refused here, before the models load."""
    for name, checkpoint in checkpoints_to_resume(config, found):
        if not getattr(config, "resume", True):
            raise ValueError(
                f"--no-resume: {flag(name)} {getattr(config, name)} holds checkpoints of an earlier run "
                f"({checkpoint['path'].name}); resume it (without --no-resume), or choose a new {flag(name)}"
            )
        saved = checkpoint["state"]["state"].get("config")
        if isinstance(saved, dict) and hasattr(config, "run_fields"):
            check_same_config(flag(name), checkpoint["path"], saved, config.run_fields())
        step, steps = checkpoint["state"].get("step"), getattr(config, "steps", None)
        if isinstance(step, int) and isinstance(steps, int) and step > steps:  # --epochs: known after loading
            raise ValueError(
                f"--steps: got {steps}, but the checkpoint {checkpoint['path']} is at step {step}; valid: "
                f">= {step} (a run is extended with more steps or epochs, never fewer)"
            )


def checkpoints_to_resume(config, found: dict) -> list[tuple[str, dict]]:
    """(option, what `read_checkpoint` read) of every output directory holding a checkpoint to resume."""
    roles = {f.name: f.metadata.get("path") for f in dataclasses.fields(config)}
    return [(name, found[name]) for name, role in roles.items() if role == "resumable_dir" and found.get(name)]
