"""The UTF-8 bytes each token id stands for in the text ("surfaces"), one table per tokenizer.

    >>> table = surfaces(tok)
    >>> table.kind, table.bytes[tok.convert_tokens_to_ids("Ġworld")]
    ('byte_level', b' world')

Two vocabulary formats cover almost every causal-LM tokenizer, and both make the text recoverable
byte for byte: byte-level BPE (GPT-2, Llama-3, Qwen2, tiktoken files), where each token string maps
through the GPT-2 byte alphabet; and sentencepiece style (Llama-2, Mistral, Gemma), where `▁` is a
space and `<0xE2>`-style pieces are single bytes. Any other format (WordPiece's `##`, BPE with
end-of-word suffixes) has `kind=None` and spans come from offsets or decoding instead.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

import numpy as np

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Surfaces:
    """Per-id byte strings of one tokenizer; `lengths[i] = -1` where id i has no known surface."""

    kind: str | None
    bytes: list
    lengths: np.ndarray
    special_ids: frozenset


def surfaces(tokenizer) -> Surfaces:
    """The (cached) surface table of `tokenizer`; rebuilt when tokens were added since."""
    size = len(tokenizer)
    hit = _CACHE.get(tokenizer)
    if hit is not None and hit[0] == size:
        return hit[1]
    table = _build(tokenizer, size)
    _CACHE[tokenizer] = (size, table)
    return table


def special_ids(tokenizer) -> frozenset:
    """Ids of the tokenizer's special tokens, including added special tokens not in `all_special_ids`."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if getattr(tok, "special", False))
    return frozenset(ids)


def _build(tokenizer, size: int) -> Surfaces:
    kind = _vocab_kind(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    decode = {"byte_level": _byte_level_piece, "metaspace": _metaspace_piece}.get(kind)
    table = [decode(p) if (decode and p is not None) else None for p in pieces]
    # Added tokens are matched verbatim in the text, never through the byte alphabet.
    for i, tok in tokenizer.added_tokens_decoder.items():
        if i < size:
            table[i] = str(tok).encode("utf-8")
    lengths = np.array([-1 if b is None else len(b) for b in table], dtype=np.int64)
    return Surfaces(kind, table, lengths, special_ids(tokenizer))


def _vocab_kind(tokenizer) -> str | None:
    """'byte_level', 'metaspace' or None, read off the fast decoder (or the slow tokenizer's attributes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and backend.decoder is not None:
        types = _decoder_types(json.loads(backend.decoder.__getstate__()))
        if "ByteLevel" in types:
            return "byte_level"
        if "Metaspace" in types or "ByteFallback" in types or ("Replace", "▁") in types:
            return "metaspace"
        return None
    if hasattr(tokenizer, "byte_decoder"):
        return "byte_level"
    if hasattr(tokenizer, "sp_model"):
        return "metaspace"
    return None


def _decoder_types(spec: dict) -> set:
    """Types in a (possibly nested) decoder spec; Replace decoders also as (type, pattern)."""
    found = {spec.get("type")}
    if spec.get("type") == "Replace":
        found.add(("Replace", spec.get("pattern", {}).get("String")))
    for child in spec.get("decoders", []) or []:
        found |= _decoder_types(child)
    return found


def _byte_level_piece(piece: str) -> bytes | None:
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in piece)
    except KeyError:
        return None


def _metaspace_piece(piece: str) -> bytes:
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-character map, inverted (character -> byte)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_UNICODE_TO_BYTE = _gpt2_byte_alphabet()
