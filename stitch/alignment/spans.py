"""Character spans of tokens (placeholder: offsets from fast tokenizers, trusted as-is).

    >>> ts = token_spans(tok, "Hello world")
    >>> ts.ids, ts.spans, ts.special
"""

from __future__ import annotations

from typing import NamedTuple


class TokenSpans(NamedTuple):
    """Token ids of one text with the character span [start, end) of each; special tokens are zero-width."""

    ids: list[int]
    spans: list[tuple[int, int]]
    special: list[bool]


def token_spans(tokenizer, text: str, add_special_tokens: bool = True) -> TokenSpans:
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    special_ids = set(tokenizer.all_special_ids)
    special = [i in special_ids for i in ids]
    spans = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    return TokenSpans(ids, spans, special)
