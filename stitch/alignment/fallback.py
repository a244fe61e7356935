"""Character spans for tokenizers whose token bytes do not spell the text: checked offsets, or decoding.

    >>> starts, ends, inserted = offset_spans(bert_tok, "Hello  World", ids, True)  # None if untrustworthy

Both paths only need where each text token ENDS in the original string: `tile` turns monotone ends
into a tiling (each token starts where the previous ended; whitespace a tokenizer dropped joins the
following token; the last token ends at the end of the text; inserted tokens are zero-width).
Spans here are character-exact, not byte-exact (normalising tokenizers do not keep byte pieces).
"""

from __future__ import annotations

import unicodedata
from difflib import SequenceMatcher

import numpy as np

from stitch.alignment.surface import special_ids


def tile(ends: np.ndarray, inserted: np.ndarray, n: int):
    """(starts, ends, inserted) tiling [0, n) from the raw ends of the text tokens; None if not monotone."""
    ends = np.asarray(ends, dtype=np.int64).copy()
    text = ~inserted
    if not text.any() or (np.diff(ends[text]) < 0).any() or ends[text].min() < 0 or ends[text].max() > n:
        return None
    last = np.flatnonzero(text)[-1]
    ends[last] = n
    running = np.maximum.accumulate(np.where(text, ends, 0))
    ends = np.where(text, ends, np.concatenate([[0], running[:-1]]))
    starts = np.concatenate([[0], running[:-1]])
    return starts, ends, inserted


def offset_spans(tokenizer, text: str, ids: list[int], add_special_tokens: bool):
    """Spans from a fast tokenizer's offsets, after checking them against the text; None if they fail."""
    enc = tokenizer(
        text,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    if list(enc["input_ids"]) != list(ids):
        return None
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    inserted = np.asarray(enc["special_tokens_mask"], dtype=bool)
    repaired = repair_offsets(offsets, inserted, len(text))
    if repaired is None:
        return None
    ends, cut = repaired
    # Pieces of a cut character are exempt from the content check: no single piece spells its span.
    if not _content_matches(tokenizer, text, ids, offsets, inserted | cut):
        return None
    return tile(ends, inserted, len(text))


def repair_offsets(offsets: np.ndarray, inserted: np.ndarray, n: int):
    """(token ends, cut) from raw offsets, or None where offsets are out of range or go backwards.

    Fast tokenizers widen a token that ends inside a character to the whole character, so it
    overlaps the next token (`ĠðŁ` (17, 19), `ĺ` (18, 19), `Ģ` (18, 19) for " 😀"). Such a token is
    `cut`: it ends where the next one starts (the character belongs to the token completing it).
    """
    idx = np.flatnonzero(~inserted)
    if idx.size == 0:
        return None
    s, e = offsets[idx, 0], offsets[idx, 1].copy()
    if (s < 0).any() or (e > n).any() or (s > e).any() or (np.diff(s) < 0).any():
        return None
    cut_here = np.append(s[1:] < e[:-1], False)
    e = np.where(cut_here, np.append(s[1:], 0), e)
    ends, cut = np.zeros(len(offsets), dtype=np.int64), np.zeros(len(offsets), dtype=bool)
    ends[idx] = e
    # The piece after a cut starts mid-character: it is cut too.
    cut[idx] = cut_here | np.concatenate([[False], cut_here[:-1]])
    return ends, cut


def _content_matches(tokenizer, text, ids, offsets, skip) -> bool:
    """Does each token's own string agree with the (normalised) text its offsets point at?"""
    normalizer = tokenizer.backend_tokenizer.normalizer
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    for k in np.flatnonzero(~skip).tolist():
        s, e = offsets[k]
        piece = _squash(tokenizer.convert_tokens_to_string([pieces[k]]))
        if s == e or not piece or "\ufffd" in piece:
            continue
        span = text[s:e] if normalizer is None else normalizer.normalize_str(text[s:e])
        if _squash(span) != piece:
            return False
    return True


def _squash(s: str) -> str:
    """Compare strings ignoring whitespace, sentencepiece `▁`, WordPiece `##`, case and accents."""
    s = "".join(s.replace("▁", " ").split())
    s = s[2:] if s.startswith("##") else s
    return "".join(c for c in unicodedata.normalize("NFKD", s.casefold()) if not unicodedata.combining(c))


def decode_spans(tokenizer, text: str, ids: list[int], inserted=None):
    """Spans by incremental decoding: where each prefix's decoded text ends, matched against `text`.

    `inserted` marks tokens the tokenizer added (default: every special id). O(n²) decoding (each
    prefix is decoded once), so it is the last resort.
    """
    if inserted is None:
        special = special_ids(tokenizer)
        inserted = [i in special for i in ids]
    inserted = np.asarray(inserted, dtype=bool)
    kept = [i for i, ins in zip(ids, inserted.tolist(), strict=True) if not ins]
    full = _decode(tokenizer, kept)
    bounds, prev, n_kept = np.zeros(len(ids), dtype=np.int64), 0, 0
    for k in range(len(ids)):
        if not inserted[k]:
            n_kept += 1
            prev = max(prev, _common_prefix(_decode(tokenizer, kept[:n_kept]), full, prev))
        bounds[k] = prev
    return tile(_decoded_to_text(full, text)[bounds], inserted, len(text))


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _common_prefix(a: str, b: str, hint: int) -> int:
    """Length of the common prefix of a and b (checked in C up to `hint`, then char by char)."""
    start = max(0, hint - 8)
    if a[:start] != b[:start]:
        start = 0
    n = min(len(a), len(b))
    while start < n and a[start] == b[start]:
        start += 1
    return start


def _decoded_to_text(decoded: str, text: str) -> np.ndarray:
    """Map each boundary in the decoded string to a boundary in the text (monotone)."""
    if decoded == text:
        return np.arange(len(text) + 1)
    matcher = SequenceMatcher(None, [_key(c) for c in decoded], [_key(c) for c in text], autojunk=False)
    where = np.full(len(decoded), -1, dtype=np.int64)
    for a, b, size in matcher.get_matching_blocks():
        where[a : a + size] = np.arange(b, b + size)
    return np.concatenate([[0], np.maximum.accumulate(where) + 1]) if len(decoded) else np.zeros(1, np.int64)


def _key(c: str) -> str:
    return " " if c.isspace() or c == "▁" else _squash(c) or c


def raise_if_unknown(tokenizer, text: str, ids: list[int], add_special_tokens: bool, name: str) -> None:
    """ValueError naming the characters `tokenizer` turned into its unknown token (if any)."""
    unk, unk_str = tokenizer.unk_token_id, str(tokenizer.unk_token)
    if unk is None or unk not in ids:
        return
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        spans = [tuple(o) for o in enc["offset_mapping"]]
    else:
        found = decode_spans(tokenizer, text, ids)
        spans = [(0, len(text))] * len(ids) if found is None else list(zip(*found[:2], strict=True))
    bad = [(s, e) for i, (s, e) in zip(ids, spans, strict=True) if i == unk and text[s:e].strip() != unk_str]
    if bad:
        s, e = bad[0]
        raise ValueError(
            f"{name} ({type(tokenizer).__name__}) cannot represent {text[s:e]!r} (characters "
            f"[{s}, {e}) of the text; {len(bad)} such place(s)): it becomes the unknown token "
            f"{unk_str!r}. Use a tokenizer that covers every character (byte-level BPE or byte "
            "fallback), or remove those characters"
        )
