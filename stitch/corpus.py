"""A real-text corpus on every machine with Python: the standard library's own English text.

    >>> from stitch.corpus import stdlib_corpus
    >>> corpus = stdlib_corpus()                      # module docstrings + pydoc_data.topics, chunked
    >>> len(corpus.train), len(corpus.held_out), corpus.sha256[:12]
    >>> corpus.sources_of("held_out")[:3]             # e.g. ['module:json/__init__.py', 'topic:assert', ...]

Two sources: the docstring of every module under the standard library directory (read with `tokenize`, so
nothing is imported or executed; `test/`, `idlelib/`, `site-packages/` are skipped), and the help topics of
`pydoc_data.topics` (the language reference as `help()` shows it). Each source is cut at blank lines into
paragraphs, packed into texts of at most `max_chars` characters. The split is by *source*: a source is held
out when the SHA-256 of its name falls in the `held_out_fraction` bucket, so no held-out text shares a
paragraph, or even a module, with a training text, and the split is the same on every run. The texts differ
between Python versions (the standard library does); `sha256` names exactly which texts a corpus holds, which
is why caches of models trained on it are keyed by it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

from stitch.checks import check_range

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
_MIN_DOC = 40  # characters: shorter module docstrings are one-line labels, not text


@dataclass(frozen=True)
class Corpus:
    """Training and held-out texts, each a (source, text) list; `sha256` identifies the whole split."""

    train_items: tuple[tuple[str, str], ...]
    held_out_items: tuple[tuple[str, str], ...]
    sha256: str

    @property
    def train(self) -> list[str]:
        return [text for _, text in self.train_items]

    @property
    def held_out(self) -> list[str]:
        return [text for _, text in self.held_out_items]

    def sources_of(self, split: str) -> list[str]:
        """The distinct sources of "train" or "held_out", in order."""
        items = {"train": self.train_items, "held_out": self.held_out_items}[split]
        return list(dict.fromkeys(source for source, _ in items))

    def summary(self) -> dict:
        """Counts for a report: texts, sources and characters per split."""
        out = {"corpus_sha256": self.sha256[:16]}
        for split, items in (("train", self.train_items), ("held_out", self.held_out_items)):
            out |= {
                f"{split}_texts": len(items),
                f"{split}_sources": len(self.sources_of(split)),
                f"{split}_chars": sum(len(t) for _, t in items),
            }
        return out


@functools.cache
def stdlib_corpus(max_chars: int = 600, held_out_fraction: float = 0.1) -> Corpus:
    """The standard library's English text, split by source; see the module docstring."""
    check_range("max_chars", max_chars, 80, 100_000)
    check_range("held_out_fraction", held_out_fraction, 0.0, 0.5)
    train, held_out = [], []
    for source, text in stdlib_sources():
        split = held_out if _bucket(source) < held_out_fraction else train
        split += [(source, chunk) for chunk in pack(paragraphs(text), max_chars)]
    digest = hashlib.sha256()
    for split, items in (("train", train), ("held_out", held_out)):
        for source, text in items:
            digest.update(f"{split}\0{source}\0{text}\0".encode())
    return Corpus(tuple(train), tuple(held_out), digest.hexdigest())


def stdlib_sources() -> list[tuple[str, str]]:
    """(source, text) for every module docstring and pydoc topic, in a fixed order."""
    return module_docstrings() + pydoc_topics()


def module_docstrings(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """("module:<path relative to the stdlib>", docstring) for every module under `root` that has one."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = Path(directory, name)
            doc = first_docstring(path)
            if doc and len(doc) >= _MIN_DOC:
                out.append((f"module:{path.relative_to(root).as_posix()}", doc))
    return out


def pydoc_topics() -> list[tuple[str, str]]:
    """("topic:<name>", text) for every help topic of `pydoc_data.topics`, sorted by name."""
    try:
        from pydoc_data.topics import topics  # stdlib, but some distributions split it out
    except ImportError:
        return []
    return [(f"topic:{name}", topics[name]) for name in sorted(topics)]


def first_docstring(path: Path) -> str | None:
    """The module docstring of the file at `path`, read from its first tokens (nothing is executed)."""
    skip = (tokenize.ENCODING, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    try:
        with open(path, "rb") as f:
            for token in tokenize.tokenize(f.readline):
                if token.type in skip:
                    continue
                if token.type != tokenize.STRING:
                    return None
                value = ast.literal_eval(token.string)
                return value if isinstance(value, str) else None
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return None
    return None


def paragraphs(text: str) -> list[str]:
    """Blocks of `text` between blank lines, each stripped of trailing space (indentation is kept)."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def pack(blocks: list[str], max_chars: int) -> list[str]:
    """Consecutive paragraphs joined by blank lines into texts of at most `max_chars` (longer ones cut)."""
    out, current = [], ""
    for block in (piece for b in blocks for piece in _cut(b, max_chars)):
        joined = f"{current}\n\n{block}" if current else block
        if len(joined) <= max_chars:
            current = joined
        else:
            out.append(current)
            current = block
    return out + [current] if current else out


def _cut(block: str, max_chars: int) -> list[str]:
    """A paragraph longer than `max_chars` cut at line breaks (or hard, for one very long line)."""
    if len(block) <= max_chars:
        return [block]
    pieces, current = [], ""
    for line in block.split("\n"):
        while len(line) > max_chars:
            pieces += [current] if current else []
            pieces.append(line[:max_chars])
            current, line = "", line[max_chars:]
        joined = f"{current}\n{line}" if current else line
        if len(joined) <= max_chars:
            current = joined
        else:
            pieces += [current] if current else []
            current = line
    return pieces + [current] if current else pieces


def _bucket(source: str) -> float:
    """A number in [0, 1) fixed by the source's name (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2**64
