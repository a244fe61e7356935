"""Text files of the command line: one text per line (blank lines skipped), or `.jsonl` {"text": ...} objects.

    >>> read_texts("train_texts", "train.txt")          # errors name --train-texts and the line
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from stitch.cli.options import flag


def read_texts(name: str, path: str, text_field: str = "text") -> list[str]:
    """Texts from `path`; a missing, empty or malformed file names the option, the file and the line.

    `hf:DATASET[:CONFIG]` reads a Hugging Face dataset (`stitch.data.load_texts`, only when a command runs).
    """
    if str(path).startswith("hf:"):
        data = importlib.import_module("stitch.data")  # imports torch: not at --help or validation time
        return data.load_texts(path, text_field=text_field, name=flag(name))
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{flag(name)}: no file at {str(path)!r}")
    lines = _read_utf8(name, file).splitlines()
    if file.suffix == ".jsonl":
        texts = [_jsonl_text(name, path, i, line, text_field) for i, line in enumerate(lines, 1) if line.strip()]
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{flag(name)}: {str(path)!r} holds no texts (every line is blank)")
    return texts


def _read_utf8(name: str, file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{flag(name)}: {str(file)!r} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
            f"{err.start} (line {line}) does not decode; re-save the file as UTF-8"
        ) from None


def _jsonl_text(name: str, path: str, lineno: int, line: str, text_field: str = "text") -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag(name)}: {path}, line {lineno}: not JSON ({err.msg})") from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str) or not text:
        raise ValueError(
            f'{flag(name)}: {path}, line {lineno}: expected an object with a non-empty "{text_field}" string'
        )
    return text
