"""Long texts: truncation, and chunks cut at the same characters for every tokenizer.

    >>> chunks = chunk_texts([long_text], [A.tokenizer, B.tokenizer], max_length=4096)
    >>> [c.text for c in chunks]          # substrings of long_text; each fits both models' 4096 positions
    >>> fit_adapter(A, B, [long_text], 16, max_length=4096)          # every corpus-level call takes it too

A chunk is a substring of its text, the same for A and B, so the token alignment of a chunk is byte-exact
by construction (both tokenizers read exactly those bytes; none is split between two chunks). Chunks end at
one of the first tokenizer's token boundaries and are checked by encoding them with every tokenizer (the
tokenizer's special tokens, e.g. BOS, count against `max_length`). With `stride=k`, each chunk after the
first starts k first-tokenizer tokens before the previous one ended: those characters (`Chunk.context`)
are read again as context.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from stitch.alignment.spans import TokenSpans, token_spans_batch
from stitch.checks import check_max_length

OVERFLOW = ("error", "truncate", "chunk")
__all__ = ["OVERFLOW", "Chunk", "chunk_texts", "corpus_texts", "fit_to_length"]


@dataclass(frozen=True)
class Chunk:
    """`text[start : start + len(chunk.text)]` of input text `index`; its first `context` characters repeat
    the end of the previous chunk (stride)."""

    text: str
    index: int
    start: int
    context: int = 0


def chunk_texts(
    texts: Sequence[str], tokenizers: Sequence, max_length: int, stride: int = 0, add_special_tokens: bool = True
) -> list[Chunk]:
    """Every text cut into chunks of at most `max_length` tokens for each tokenizer (texts that fit: one chunk)."""
    check_max_length(max_length, stride)
    encoded = [token_spans_batch(tok, list(texts), add_special_tokens) for tok in tokenizers]
    chunks: list[Chunk] = []
    for i, text in enumerate(texts):
        encs = [per_tok[i] for per_tok in encoded]
        if all(len(enc.ids) <= max_length for enc in encs):
            chunks.append(Chunk(text, i, 0))
        else:
            chunks += _chunk_one(text, i, encs, tokenizers, max_length, stride, add_special_tokens)
    return chunks


def corpus_texts(tokenizers: Sequence, texts: Sequence[str], max_length: int | None, stride: int = 0) -> list[str]:
    """The texts a corpus-level call runs on: `texts` (max_length=None), or their chunks' texts."""
    if max_length is None:
        return list(texts)
    return [c.text for c in chunk_texts(texts, tokenizers, max_length, stride)]


class _Counter:
    """Non-special tokens of one encoding overlapping a character range, by binary search."""

    def __init__(self, enc: TokenSpans):
        kept = [span for span, special in zip(enc.spans, enc.special, strict=True) if not special]
        self.starts = [s for s, _ in kept]
        self.ends = [e for _, e in kept]
        self.n_special = sum(enc.special)

    def count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.starts, end) - bisect.bisect_right(self.ends, start)


def _chunk_one(text, index, encs, tokenizers, max_length, stride, add_special_tokens) -> list[Chunk]:
    counters = [_Counter(enc) for enc in encs]
    cuts = sorted({e for e in counters[0].ends if 0 < e < len(text)} | {len(text)})
    chunks, start, context = [], 0, 0
    while True:
        end = _cut(text, start, cuts, counters, tokenizers, max_length, add_special_tokens)
        chunks.append(Chunk(text[start:end], index, start, context))
        if end == len(text):
            return chunks
        nxt = _next_start(counters[0], start, end, stride)
        start, context = nxt, end - nxt


def _cut(text, start, cuts, counters, tokenizers, max_length, add_special_tokens) -> int:
    """The furthest cut after `start` whose chunk fits every tokenizer (checked by encoding it)."""
    def fits_estimate(end: int) -> bool:
        return all(c.count(start, end) + c.n_special <= max_length for c in counters)

    candidates = cuts[bisect.bisect_right(cuts, start) :]
    k, hi = 0, len(candidates)  # the estimate is monotone in `end`: binary search for the first misfit
    while k < hi:
        mid = (k + hi) // 2
        k, hi = (mid + 1, hi) if fits_estimate(candidates[mid]) else (k, mid)
    for end in reversed(candidates[:k]):
        if _fits(text[start:end], tokenizers, max_length, add_special_tokens):
            return end
    nearest = candidates[0] if candidates else len(text)
    for end in range(nearest - 1, start, -1):  # one token longer than a chunk: cut inside it, by characters
        if _fits(text[start:end], tokenizers, max_length, add_special_tokens):
            return end
    raise ValueError(
        f"max_length: {max_length} tokens cannot hold even one character of the text at character {start} "
        f"({text[start:start + 10]!r}...); use a larger max_length"
    )


def _fits(chunk: str, tokenizers, max_length: int, add_special_tokens: bool) -> bool:
    return all(len(token_spans_batch(tok, [chunk], add_special_tokens)[0].ids) <= max_length for tok in tokenizers)


def _next_start(counter: _Counter, start: int, end: int, stride: int) -> int:
    """`end`, or the start of the `stride`-th last first-tokenizer token inside [start, end)."""
    if stride == 0:
        return end
    inside = [s for s, e in zip(counter.starts, counter.ends, strict=True) if s >= start and e <= end]
    if len(inside) <= stride:
        return end
    return max(inside[-stride], start + 1)


def fit_to_length(
    tokenizer, texts: list[str], encoded: list[TokenSpans], max_length: int, overflow: str, stride: int,
    add_special_tokens: bool, limit_name: str | None = None,
) -> tuple[list[str], list[TokenSpans]]:
    """Texts and encodings within `max_length` tokens: refused ("error"), cut ("truncate") or chunked ("chunk")."""
    if all(len(enc.ids) <= max_length for enc in encoded):
        return texts, encoded
    if overflow == "truncate":
        return texts, [_truncate(enc, max_length) for enc in encoded]
    if overflow == "chunk":
        chunks = [c.text for c in chunk_texts(texts, [tokenizer], max_length, stride, add_special_tokens)]
        return chunks, token_spans_batch(tokenizer, chunks, add_special_tokens)
    i = next(i for i, enc in enumerate(encoded) if len(enc.ids) > max_length)
    raise ValueError(
        f"texts[{i}]: {len(encoded[i].ids)} tokens exceed {limit_name or f'max_length={max_length}'} "
        f"(valid: 1..{max_length} "
        "tokens); pass overflow='truncate' (keep the first max_length tokens) or overflow='chunk' (cut it "
        "into texts that fit, optionally with a stride)"
    )


def _truncate(enc: TokenSpans, n: int) -> TokenSpans:
    return TokenSpans(enc.ids[:n], enc.spans[:n], enc.special[:n], enc.byte_spans[:n])
