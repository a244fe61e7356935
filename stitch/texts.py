"""Text files: one text per line (blank lines skipped), or `.jsonl` objects with a text field. No torch here, so
the command line reads and checks text files before any model code is imported.

    >>> read_texts("train.jsonl", text_field="body", name="--train-texts")   # errors name `name`, file and line
"""

from __future__ import annotations

import json
from pathlib import Path


def read_texts(path: str, text_field: str = "text", name: str = "texts") -> list[str]:
    """Texts from `path`: one per line (blank lines skipped), or a `.jsonl` file of {text_field: ...} objects."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}: no file at {str(path)!r}")
    lines = _read_utf8(name, file).splitlines()
    if file.suffix == ".jsonl":
        texts = [
            _jsonl_text(name, path, i, line, text_field) for i, line in enumerate(lines, 1) if line.strip()
        ]
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{name}: {str(path)!r} holds no texts (every line is blank)")
    return texts


def _read_utf8(name: str, file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{name}: {str(file)!r} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
            f"{err.start} (line {line}) does not decode; re-save the file as UTF-8"
        ) from None


def _jsonl_text(name: str, path, lineno: int, line: str, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: {path}, line {lineno}: not JSON ({err.msg})") from None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str) or not text:
        raise ValueError(
            f'{name}: {path}, line {lineno}: expected an object with a non-empty "{field}" string'
        )
    return text
