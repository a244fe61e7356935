"""Token alignment: where every token of a text sits in the original string, and how two
tokenizations of the same text line up (target grid, source grid, shared boundaries).

    >>> from stitch.alignment import TokenAlignment, align_batch, token_spans
    >>> al = TokenAlignment.build("Hello world", source_tokenizer, target_tokenizer)
"""

from stitch.alignment.align import IGNORE, BatchAlignment, TokenAlignment, align_batch, align_spans
from stitch.alignment.spans import TokenSpans, spans_from_ids, token_spans, token_spans_batch

__all__ = [
    "IGNORE",
    "BatchAlignment",
    "TokenAlignment",
    "TokenSpans",
    "align_batch",
    "align_spans",
    "spans_from_ids",
    "token_spans",
    "token_spans_batch",
]
