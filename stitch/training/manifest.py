"""A directory's manifest: the size and SHA-256 of every file in it, and a SHA-256 of that list itself, so
that a truncated, altered or edited file — the manifest included — is found before it is trusted.

    >>> write_manifest(directory)                                   # once every other file is written
    >>> files = read_manifest(directory, required=["trainer_state.json"])   # ValueError naming the file
    >>> check_file(directory / "trainer_state.json", files["trainer_state.json"])
    >>> verify(directory, required=["trainer_state.json"])          # every listed file
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stitch.files import write_atomic

MANIFEST_NAME, FORMAT = "manifest.json", "stitch-manifest"


def write_manifest(directory: Path) -> Path:
    """List every regular, non-hidden file of `directory` (but the manifest) in `manifest.json`."""
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != MANIFEST_NAME and not f.name.startswith(".")
    }
    record = {"format": FORMAT, "files": files, "sha256": _files_hash(files)}
    return write_atomic(directory / MANIFEST_NAME, json.dumps(record, indent=1) + "\n")


def read_manifest(directory: Path, required: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The manifest's file list, once it has checked itself and lists every `required` file (an empty or
    partial list would disable verification, so it is corrupt)."""
    file = directory / MANIFEST_NAME
    if not file.is_file():
        raise ValueError(f"{directory}: no {MANIFEST_NAME}, so nothing in it can be verified")
    manifest = load_json(file)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file}: not a {FORMAT} file")
    files = manifest.get("files")
    if not isinstance(files, dict) or _files_hash(files) != manifest.get("sha256"):
        raise ValueError(f"{file}: altered: its file list does not match its own SHA-256")
    missing = [name for name in required if name not in files]
    if missing or any(Path(name).name != name or not isinstance(e, dict) for name, e in files.items()):
        raise ValueError(f"{file}: corrupt: it lists {sorted(files)}; valid: at least {list(required)}")
    return files


def verify(directory: Path, required: Sequence[str]) -> None:
    """Check every file the manifest lists against its recorded size and SHA-256."""
    for name, expected in read_manifest(directory, required).items():
        check_file(directory / name, expected)


def check_file(file: Path, expected: dict[str, Any]) -> None:
    if not file.is_file():
        raise ValueError(f"{file}: missing from the checkpoint")
    size = file.stat().st_size
    if size != expected.get("bytes"):
        raise ValueError(
            f"{file}: truncated or altered: {size} bytes, the checkpoint recorded {expected.get('bytes')}"
        )
    if sha256(file) != expected.get("sha256"):
        raise ValueError(f"{file}: altered: its SHA-256 differs from the one the checkpoint recorded")


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_json(file: Path) -> Any:
    """`file` parsed as JSON; a ValueError naming the file when it is truncated or not JSON."""
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: truncated or corrupt ({err})") from None


def _files_hash(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
