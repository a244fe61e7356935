"""Atomic file writes: a temp file in the same directory, fsync, then `os.replace`.

>>> write_atomic("out/report.html", html)       # readers see the old file or the whole new one, never half
>>> with atomic_directory("cache/model-1f2e") as tmp:   # fill tmp; it becomes cache/model-1f2e on success
...     model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str is UTF-8 encoded) to `path` atomically; on any error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, created with mode 0o666 so the kernel applies the umask, exactly
    as `open()` would (reading the umask means setting it: process-wide, racing with other threads)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a unique temp file for {path.name}")


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new directory in `parent` with the permissions `mkdir` gives (not `mkdtemp`'s 0700)."""
    for _ in range(100):
        tmp = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: could not create a unique temp directory {prefix}*")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `path` that is renamed to `path` when the block succeeds.

    A kill or an error mid-block leaves no `path` (only a hidden `.name.tmp-*` that the next call ignores and
    an error removes), so a reader finds the whole directory or none. If another process finished the same
    `path` first, its copy is kept and this one discarded (both were built from the same inputs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path.parent, f".{path.name}.tmp-")
    try:
        yield tmp
        try:
            os.replace(tmp, path)  # atomic on POSIX; fails when `path` already exists and is not empty
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
