"""The span of every token of a text in the ORIGINAL string, for any Hugging Face tokenizer.

    >>> ts = token_spans(tok, "Hi 😀")
    >>> ts.ids, ts.spans, ts.special, ts.byte_spans

Convention. Spans are computed on the UTF-8 bytes of the text (`byte_spans`, exact: a byte-fallback
token such as `<0xF0>` covers one byte) and exposed in characters (`spans`) by rounding both ends
DOWN to a character boundary: a character belongs to the token that completes it, so the leading
byte pieces of a split character are zero-width at its start. Non-special spans tile the text: the
first starts at 0, each starts where the previous ended, the last ends at `len(text)` (in bytes and in
characters). Special tokens the tokenizer inserts (BOS, EOS, CLS...) are `special` and zero-width
(BOS at 0, EOS at the end); a special token's string written in the text itself (`<|eot_id|>` in a
chat transcript) is text and covers those characters. A prefix space the tokenizer adds (`▁Hello`)
covers nothing; whitespace a tokenizer drops (WordPiece) belongs to the following token.

How. The "surface" path decodes every token to its bytes (byte-level or sentencepiece vocabularies)
and accepts the result only if the bytes concatenate to the text exactly. Normalising fast
tokenizers (NFKC, lowercasing) fall back to their offsets, checked and repaired (`fallback.py`);
anything else falls back to incremental decoding matched against the text.
"""

from __future__ import annotations

import itertools
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from stitch.alignment.fallback import decode_spans, offset_spans, raise_if_unknown
from stitch.alignment.surface import Surfaces, surfaces

METHODS = ("auto", "surface", "offsets", "decode")


class TokenSpans(NamedTuple):
    """Token ids of one text with the span of each (see the module docstring for the convention).

    `spans[k] = (start, end)` in characters, `byte_spans[k]` in UTF-8 bytes of the text; `special[k]`
    marks tokens inserted by the tokenizer (zero-width).
    """

    ids: list[int]
    spans: list[tuple[int, int]]
    special: list[bool]
    byte_spans: list[tuple[int, int]]


def token_spans(tokenizer, text: str, add_special_tokens: bool = True, *, method: str = "auto") -> TokenSpans:
    """Spans of `tokenizer(text)`'s tokens; `method` forces one path ('surface', 'offsets', 'decode')."""
    return token_spans_batch(tokenizer, [text], add_special_tokens, method=method)[0]


def token_spans_batch(
    tokenizer,
    texts: list[str],
    add_special_tokens: bool = True,
    *,
    method: str = "auto",
    name: str = "tokenizer",
) -> list[TokenSpans]:
    """`token_spans` for many texts with one (parallel, for fast tokenizers) tokenizer call.

    >>> [ts.ids for ts in token_spans_batch(tok, ["a b", "c"])]
    """
    check_tokenizer(tokenizer, name)
    for text in texts:
        check_text(text)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    encoded = _encode(tokenizer, texts, add_special_tokens)
    return spans_from_ids(tokenizer, texts, encoded, add_special_tokens, method=method, name=name)


def spans_from_ids(
    tokenizer,
    texts: list[str],
    encoded,
    add_special_tokens: bool = True,
    *,
    method: str = "auto",
    name: str = "tokenizer",
) -> list[TokenSpans]:
    """Spans for ids you already have: `encoded[k] = (ids, inserted)` for `texts[k]`, where `inserted`
    marks post-processor tokens (a fast tokenizer's `special_tokens_mask`) or is None (unknown).

    >>> enc = tok(texts, return_special_tokens_mask=True)
    >>> spans_from_ids(tok, texts, list(zip(enc["input_ids"], enc["special_tokens_mask"])))
    """
    datas = [t.encode("utf-8") for t in texts]
    found = [None] * len(texts)
    if method in ("auto", "surface"):
        found = surface_spans_batch(surfaces(tokenizer), encoded, datas)
    out = []
    for text, data, (ids, hint), hit in zip(texts, datas, encoded, found, strict=True):
        hit = hit or _fallback(tokenizer, text, data, ids, hint, add_special_tokens, method, name)
        out.append(_assemble(ids, hit, text, data))
    return out


def check_tokenizer(tokenizer, name: str = "tokenizer") -> None:
    """TypeError unless `tokenizer` looks like a Hugging Face tokenizer (and not, say, the text)."""
    if isinstance(tokenizer, str):
        raise TypeError(
            f"{name} must be a Hugging Face tokenizer, got the string {tokenizer[:40]!r}; "
            "arguments go (text, source_tokenizer, target_tokenizer)"
        )
    needed = ("convert_ids_to_tokens", "all_special_ids", "added_tokens_decoder", "decode")
    if not callable(tokenizer) or not all(hasattr(tokenizer, a) for a in needed):
        raise TypeError(
            f"{name} must be a Hugging Face tokenizer (PreTrainedTokenizerBase), "
            f"got {type(tokenizer).__name__}"
        )


def check_text(text, name: str = "text") -> None:
    """TypeError/ValueError unless `text` is a non-empty string that UTF-8 can encode."""
    if not isinstance(text, str):
        hint = "; arguments go (text, source_tokenizer, target_tokenizer)" if callable(text) else ""
        raise TypeError(f"{name} must be a str, got {type(text).__name__}{hint}")
    if not text:
        raise ValueError(f"{name} must be a non-empty string, got ''")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} has a lone surrogate {text[err.start]!r} at character {err.start}; "
            "valid text is encodable as UTF-8"
        ) from None


def _encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[tuple[list[int], list | None]]:
    """Ids of each text plus, for fast tokenizers, which tokens the post-processor inserted."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(
            texts,
            add_special_tokens=add_special_tokens,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )
        return list(zip(enc["input_ids"], enc["special_tokens_mask"], strict=True))
    return [(list(tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]), None) for t in texts]


def _fallback(tokenizer, text, data, ids, hint, add_special_tokens, method, name):
    """Spans when the token surfaces do not spell the text: checked offsets, then decoding."""
    found = None
    if method in ("auto", "surface"):
        found = _walk(surfaces(tokenizer), ids, hint, data)
    if found is None:
        raise_if_unknown(tokenizer, text, ids, add_special_tokens, name)
    if found is None and method in ("auto", "offsets") and getattr(tokenizer, "is_fast", False):
        found = _char_to_byte(offset_spans(tokenizer, text, ids, add_special_tokens), text, data)
    if found is None and method in ("auto", "decode"):
        found = _char_to_byte(decode_spans(tokenizer, text, ids, hint), text, data)
    if found is None and (not ids or (hint is not None and all(hint))):
        raise ValueError(
            f"{name} ({type(tokenizer).__name__}) gives no text tokens for {text[:60]!r}: it drops "
            "every character, so no token can stand for this text; valid texts have a token"
        )
    if found is None:
        raise ValueError(
            f"{name} ({type(tokenizer).__name__}): method={method!r} could not place the "
            f"tokens of text {text[:60]!r} on the text; valid methods: {METHODS}"
        )
    return found


def surface_spans_batch(table: Surfaces, encoded, datas: list[bytes]) -> list:
    """Per text (byte starts, byte ends, inserted) where the token surfaces spell it exactly, else None.

    Vectorised over the whole batch: one lookup of every token's byte length, one join of every
    token's bytes; each text then compares its slice of the join with its own bytes.
    """
    counts = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
    ids = np.fromiter(
        itertools.chain.from_iterable(ids for ids, _ in encoded), dtype=np.int64, count=counts.sum()
    )
    if ids.size and (ids.min() < 0 or ids.max() >= len(table.bytes)):
        return [None] * len(encoded)
    inserted = _inserted_guess(table, ids, encoded, counts)
    lengths = np.where(inserted, 0, table.lengths[ids])
    if (lengths < 0).any():
        return [None] * len(encoded)
    # itemgetter returns a bare item for one index: two dummies keep it a tuple.
    joined = b"".join(itemgetter(*ids[~inserted].tolist(), 0, 0)(table.bytes)[:-2])
    ends = np.cumsum(lengths)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offsets = np.concatenate([[0], ends])[firsts]  # where each text's bytes start in the join
    totals = np.concatenate([[0], ends])[firsts + counts] - offsets
    out = []
    for k, data in enumerate(datas):
        piece = joined[offsets[k] : offsets[k] + totals[k]]
        shift = 0 if piece == data else 1 if piece == b" " + data else None
        if shift is None:
            out.append(None)
            continue
        rows = slice(firsts[k], firsts[k] + counts[k])
        e = np.maximum(ends[rows] - offsets[k] - shift, 0)
        out.append((np.maximum(e - lengths[rows], 0), e, inserted[rows]))
    return out


def _inserted_guess(table: Surfaces, ids: np.ndarray, encoded, counts) -> np.ndarray:
    """Fast tokenizers say which tokens the post-processor inserted; slow ones: assume all specials."""
    if all(hint is not None for _, hint in encoded):
        return np.fromiter(
            itertools.chain.from_iterable(h for _, h in encoded), dtype=bool, count=counts.sum()
        )
    return np.fromiter((i in table.special_ids for i in ids.tolist()), dtype=bool, count=len(ids))


def _walk(table: Surfaces, ids: list[int], hint, data: bytes):
    """Token-by-token match, for special-token strings written in the text; None if it fails.

    A section (the text's start, or after a special token written in the text) may open with a
    prefix space the tokenizer added.
    """
    pos, spans, flags, fresh = 0, [], [], True
    for k, i in enumerate(ids):
        piece = table.bytes[i]
        written = piece and (hint is None or not hint[k]) and data.startswith(piece, pos)
        if i in table.special_ids and not written:
            spans.append((pos, pos))
            flags.append(True)
            continue
        if piece is None:
            return None
        if data.startswith(piece, pos):
            n = len(piece)
        elif fresh and piece[:1] == b" " and data.startswith(piece[1:], pos):
            n = len(piece) - 1
        else:
            return None
        spans.append((pos, pos + n))
        flags.append(False)
        pos, fresh = pos + n, i in table.special_ids
    if pos != len(data):
        return None
    arr = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1], np.array(flags, dtype=bool)


def _char_to_byte(found, text: str, data: bytes):
    """(char starts, char ends, inserted) -> the same in bytes."""
    if found is None:
        return None
    starts, ends, inserted = found
    if len(data) == len(text):
        return starts, ends, inserted
    offsets = _char_starts(data)
    return offsets[starts], offsets[ends], inserted


def _char_starts(data: bytes) -> np.ndarray:
    """Byte offset of every character start, plus len(data) at the end."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return np.append(np.flatnonzero((arr & 0xC0) != 0x80), len(data))


def _to_chars(found, text: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Byte (starts, ends) -> character (starts, ends), both rounded down to a character boundary."""
    starts, ends, _ = found
    if len(data) == len(text):
        return starts, ends
    is_end = np.zeros(len(data) + 1, dtype=np.int64)
    is_end[1:] = np.append((np.frombuffer(data, dtype=np.uint8)[1:] & 0xC0) != 0x80, True)
    floor = np.cumsum(is_end)
    return floor[starts], floor[ends]


def _assemble(ids, found, text: str, data: bytes) -> TokenSpans:
    char_starts, char_ends = _to_chars(found, text, data)
    starts, ends, inserted = found
    return TokenSpans(
        ids=list(ids),
        spans=list(zip(char_starts.tolist(), char_ends.tolist(), strict=True)),
        special=inserted.tolist(),
        byte_spans=list(zip(starts.tolist(), ends.tolist(), strict=True)),
    )
