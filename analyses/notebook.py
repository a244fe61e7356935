"""What the notebooks share: their two models and real text, in full or tiny mode, and offline figures.

    >>> from analyses.notebook import notebook_pair
    >>> nb = notebook_pair()                  # the demo's cached pair (stitch.zoo), trained once if missing
    >>> nb = notebook_pair(tiny=True)         # tiny models built here in seconds (what the test suite runs)
    >>> nb.A, nb.B, nb.train, nb.held_out, nb.mode

Full mode is `stitch.zoo.demo_pair()`: the demo's Llama-style A (byte-level BPE) and Mistral-style B
(sentencepiece-style BPE, a quarter of A's vocabulary), pre-trained on the standard library's text and cached
(the first call trains them, a few minutes on 2 cores; later calls read them in a second). Tiny mode
($STITCH_NOTEBOOK_TINY=1 when `tiny` is None) keeps the same shapes of the problem — the two tokenizer styles,
two families, two widths, the same real text — at a size where every cell runs in well under a second: the
tokenizers are trained on a few dozen texts of `stitch.corpus`, the models are `stitch.testing.tiny_model`s
trained for a few full-batch steps. Its numbers show the API, not what stitching can do.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from analyses.figures.notebook import offline_figures
from stitch.models.hooked import HookedLM
from stitch.models.loading import load_model
from stitch.testing import tiny_model, train_briefly
from stitch.zoo import byte_level_bpe, demo_corpus, demo_pair, sentencepiece_bpe

TINY_ENV = "STITCH_NOTEBOOK_TINY"
TINY = {"texts": 48, "chars": 300, "vocab": (1024, 320), "layers": 2, "widths": (32, 48), "steps": 4}


@dataclass(frozen=True)
class NotebookPair:
    """The two models, training and held-out texts, and the mode ("full" or "tiny") they come from."""

    A: HookedLM
    B: HookedLM
    train: list[str]
    held_out: list[str]
    mode: str
    infos: dict

    def describe(self) -> str:
        lines = [f"mode: {self.mode} ({len(self.train)} training texts, {len(self.held_out)} held-out)"]
        for M in (self.A, self.B):
            lines.append(f"{M.name}: {M.n_layers} layers, width {M.d_model}, vocabulary {len(M.tokenizer)}")
        return "\n".join(lines)


def tiny_mode(tiny: bool | None = None) -> bool:
    """`tiny`, else whether $STITCH_NOTEBOOK_TINY is set to 1 / true / yes."""
    if tiny is not None:
        return bool(tiny)
    return os.environ.get(TINY_ENV, "").strip().lower() in ("1", "true", "yes")


def notebook_pair(tiny: bool | None = None, n_train: int = 400, n_held_out: int = 60,
                  progress: bool = True, figures: bool = True) -> NotebookPair:
    """The notebooks' models and texts (see the module docstring); `figures`: also `offline_figures()`."""
    if figures:
        offline_figures()
    corpus = demo_corpus()
    if not tiny_mode(tiny):
        A, B, infos = demo_pair(progress=progress)
        return NotebookPair(A, B, corpus.train[:n_train], corpus.held_out[:n_held_out], "full", infos)
    n, chars = TINY["texts"], TINY["chars"]
    train = [t[:chars] for t in corpus.train[:n]]
    held_out = [t[:chars] for t in corpus.held_out[: max(4, n // 4)]]
    models = {}
    for name, family, make, vocab, width, seed in (
        ("A", "llama", byte_level_bpe, TINY["vocab"][0], TINY["widths"][0], 0),
        ("B", "mistral", sentencepiece_bpe, TINY["vocab"][1], TINY["widths"][1], 1),
    ):
        tok = make(train, vocab_size=vocab)
        hf = tiny_model(family, len(tok), n_layers=TINY["layers"], d_model=width, n_ctx=512, seed=seed)
        hf = train_briefly(hf, tok, train[:8], steps=TINY["steps"], lr=2e-2)
        models[name] = load_model(hf, tokenizer=tok, name=f"{name} (tiny {family})")
    return NotebookPair(models["A"], models["B"], train, held_out, "tiny", {})


def table(records: Sequence[dict], digits: int = 4):
    """`records` (dicts with the same keys) as an HTML table for a notebook cell, every value escaped.

    Floats show `digits` significant digits, NaN as "NaN"; the cell's text/plain fallback is the same table
    as aligned text, which is what a reader sees where HTML is not rendered.
    """
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [[_shown(r.get(c), digits) for c in columns] for r in records]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return _Table(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", columns, rows)


class _Table:
    """What `table` returns: HTML in a notebook, aligned text elsewhere."""

    def __init__(self, markup: str, columns: list, rows: list[list[str]]):
        self.markup, self.columns, self.rows = markup, columns, rows

    def _repr_html_(self) -> str:
        return self.markup

    def __repr__(self) -> str:
        widths = [max(len(str(c)), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join(lines)


def _shown(value, digits: int) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}g}"
    return "" if value is None else str(value)


__all__ = ["TINY", "TINY_ENV", "NotebookPair", "notebook_pair", "table", "tiny_mode"]
