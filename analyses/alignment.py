"""How two tokenizers line up over a corpus: tokens per character, shared boundaries, fan-in, starved tokens.

    >>> from analyses.alignment import alignment_summary
    >>> s = alignment_summary(texts, A.tokenizer, B.tokenizer)
    >>> s.source_tokens_per_char, s.shared_fraction_target, s.no_source_fraction
    >>> s.to_dict()                                    # plain JSON-able record

Counts use text tokens only (special tokens such as BOS are excluded), except that a target token fed
only by a special source token (BOS) counts as having no source state: it has read no text through A.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from stitch.alignment import TokenAlignment
from stitch.checks import check_texts


@dataclass(frozen=True)
class AlignmentSummary:
    """Corpus-level statistics of a source/target token alignment (see `summarize`).

    `source_per_target_hist[k]`: number of target tokens within which exactly k source tokens end
    (k = 0: the target token gets the same A state as the previous one).
    """

    n_texts: int
    n_chars: int
    n_source_tokens: int
    n_target_tokens: int
    source_tokens_per_char: float
    target_tokens_per_char: float
    source_per_target: float
    shared_boundaries: int
    shared_fraction_source: float
    shared_fraction_target: float
    no_source_fraction: float
    repeated_source_fraction: float
    source_per_target_hist: tuple[int, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "source_per_target_hist": list(self.source_per_target_hist)}

    @classmethod
    def from_dict(cls, data: dict) -> AlignmentSummary:
        return cls(**{**data, "source_per_target_hist": tuple(data["source_per_target_hist"])})


def alignment_summary(texts: Sequence[str], source_tokenizer, target_tokenizer) -> AlignmentSummary:
    """Align every text with both tokenizers and summarise (see `summarize`)."""
    texts = check_texts(texts)
    return summarize(TokenAlignment.build(t, source_tokenizer, target_tokenizer) for t in texts)


def summarize(alignments: Iterable[TokenAlignment]) -> AlignmentSummary:
    """Pool per-text counts over alignments of several texts."""
    totals = {"texts": 0, "chars": 0, "src": 0, "tgt": 0, "shared": 0, "none": 0, "repeat": 0}
    hist = torch.zeros(0, dtype=torch.long)
    for al in alignments:
        counts, fan_in = _counts(al)
        for key, value in counts.items():
            totals[key] += value
        hist = _add_hist(hist, torch.bincount(fan_in))
    if totals["texts"] == 0:
        raise ValueError("alignments: expected at least one TokenAlignment, got none")
    return _summary(totals, hist)


def _counts(al: TokenAlignment) -> tuple[dict[str, int], torch.Tensor]:
    """Per-text counts, and for each target text token the number of source text tokens ending in it."""
    src_text, tgt_text = ~al.source_special, ~al.target_special
    t2s = al.target_to_source[tgt_text]
    # Source text tokens finished by target token j: cumulative count at t2s[j] minus at t2s[j - 1].
    finished = torch.cat([torch.zeros(1, dtype=torch.long), src_text.long().cumsum(0)])[t2s + 1]
    fan_in = torch.diff(finished, prepend=torch.zeros(1, dtype=torch.long))
    counts = {
        "texts": 1,
        "chars": len(al.text),
        "src": int(src_text.sum()),
        "tgt": int(tgt_text.sum()),
        "shared": len(al.shared_boundaries),
        "none": int((finished == 0).sum()),
        "repeat": int(((fan_in == 0) & (finished > 0)).sum()),
    }
    return counts, fan_in


def _add_hist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(len(a), len(b))
    return torch.nn.functional.pad(a, (0, n - len(a))) + torch.nn.functional.pad(b, (0, n - len(b)))


def _summary(t: dict[str, int], hist: torch.Tensor) -> AlignmentSummary:
    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return AlignmentSummary(
        n_texts=t["texts"],
        n_chars=t["chars"],
        n_source_tokens=t["src"],
        n_target_tokens=t["tgt"],
        source_tokens_per_char=ratio(t["src"], t["chars"]),
        target_tokens_per_char=ratio(t["tgt"], t["chars"]),
        source_per_target=ratio(t["src"], t["tgt"]),
        shared_boundaries=t["shared"],
        shared_fraction_source=ratio(t["shared"], t["src"]),
        shared_fraction_target=ratio(t["shared"], t["tgt"]),
        no_source_fraction=ratio(t["none"], t["tgt"]),
        repeated_source_fraction=ratio(t["repeat"], t["tgt"]),
        source_per_target_hist=tuple(hist.tolist()),
    )
