"""Text files of the command line: one text per line (blank lines skipped), or `.jsonl` {"text": ...} objects.

    >>> read_texts("train_texts", "train.txt")          # errors name --train-texts and the line
"""

from __future__ import annotations

import importlib

from stitch.cli.options import flag
from stitch.texts import read_texts as read_text_file


def read_texts(name: str, path: str, text_field: str = "text") -> list[str]:
    """Texts from `path`; a missing, empty or malformed file names the option, the file and the line.

    `hf:DATASET[:CONFIG]` reads a Hugging Face dataset (`stitch.data.load_texts`, only when a command runs).
    """
    if str(path).startswith("hf:"):
        data = importlib.import_module("stitch.data")  # imports torch: not at --help or validation time
        return data.load_texts(path, text_field=text_field, name=flag(name))
    return read_text_file(path, text_field, name=flag(name))
