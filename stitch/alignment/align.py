"""Token alignment between two tokenizations of the same text (target grid, source grid, shared boundaries).

    >>> al = TokenAlignment.build("Hi 😀 there", llama_tok, mistral_tok)
    >>> al.target_to_source          # per target token: last source token ending at or before it, -1 if none
    >>> al.source_labels             # per source token: target token id starting where it ends, -100 if none
    >>> al.shared_boundaries         # [n, 2] (source index, target index) pairs ending at the same byte
    >>> aligned = align_batch(source_batch, target_batch)   # the same on padded `stitch.batch.Batch`es

Everything compares UTF-8 byte offsets (`TokenSpans.byte_spans`), so causality is exact where one
character is cut into several byte tokens: a source token that read any byte past the end of target
token j never feeds j. Tokens ending at the same byte are ordered by their rank in that group (BOS
before the first text token ending at 0; the last text token before EOS), which makes identical
tokenizers align to the identity. One implementation, batched, on torch tensors; single texts are a
batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from stitch.alignment.spans import TokenSpans, check_text, check_tokenizer, token_spans_batch
from stitch.losses import IGNORE

_FAR = torch.iinfo(torch.int64).max // 4  # sort key of right padding: after every real token


@dataclass(frozen=True)
class BatchAlignment:
    """Alignment of a padded batch; -1 / -100 at padding and wherever no token qualifies.

    `target_to_source[b, j]`: index of the source token feeding target token j (target grid).
    `source_labels[b, i]`: id of the target token starting where source token i ends (source grid),
    at index `source_next[b, i]`. `shared[b, j]`: target token j and source token target_to_source[b, j]
    end at the same byte (neither special). Unpacks as `target_to_source, source_labels = ...`.
    """

    target_to_source: Int[Tensor, "batch target_pos"]
    source_labels: Int[Tensor, "batch source_pos"]
    source_next: Int[Tensor, "batch source_pos"]
    shared: Bool[Tensor, "batch target_pos"]

    def __iter__(self):
        return iter((self.target_to_source, self.source_labels))


def align_spans(
    source_ends: Int[Tensor, "batch source_pos"],
    source_valid: Bool[Tensor, "batch source_pos"],
    source_special: Bool[Tensor, "batch source_pos"],
    target_spans: Int[Tensor, "batch target_pos 2"],
    target_valid: Bool[Tensor, "batch target_pos"],
    target_special: Bool[Tensor, "batch target_pos"],
    target_ids: Int[Tensor, "batch target_pos"],
) -> BatchAlignment:
    """The alignment from span ends (bytes, or characters) and masks; padding may be left or right.

    >>> align_spans(src_ends, src_valid, src_special, tgt_spans, tgt_valid, tgt_special, tgt_ids)
    """
    target_ends = target_spans[..., 1]
    scale = max(source_ends.shape[1], target_ends.shape[1]) + 1  # ranks < scale, shared by both sides
    src_key = _sort_keys(source_ends, source_valid, scale)
    tgt_key = _sort_keys(target_ends, target_valid, scale)
    t2s = torch.searchsorted(src_key, tgt_key, right=True) - 1
    t2s = torch.where(target_valid & (t2s >= _first_valid(source_valid)), t2s, -1)
    src_end_at = source_ends.gather(1, t2s.clamp(min=0))
    src_special_at = source_special.gather(1, t2s.clamp(min=0))
    shared = (t2s >= 0) & (src_end_at == target_ends) & ~src_special_at & ~target_special
    usable = target_valid & ~target_special
    nxt = _next_start(src_key, source_ends, source_valid, tgt_key, target_spans[..., 0], usable)
    labels = torch.where(nxt >= 0, target_ids.gather(1, nxt.clamp(min=0)), IGNORE)
    return BatchAlignment(t2s, labels, nxt, shared)


def _first_valid(valid: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch 1"]:
    return valid.int().argmax(dim=1, keepdim=True)


def _sort_keys(
    ends: Int[Tensor, "batch pos"], valid: Bool[Tensor, "batch pos"], scale: int
) -> Int[Tensor, "batch pos"]:
    """end * scale + rank among the tokens sharing that end; left padding -1, right padding far."""
    pos = torch.arange(ends.shape[1], device=ends.device).expand_as(ends)
    opens = valid.clone()  # a run of equal ends opens at its first token
    opens[:, 1:] &= (ends[:, 1:] != ends[:, :-1]) | ~valid[:, :-1]
    rank = pos - torch.where(opens, pos, 0).cummax(dim=1).values
    left = pos < _first_valid(valid)
    return torch.where(valid, ends * scale + rank, torch.where(left, -1, _FAR))


def _next_start(
    src_key, source_ends, source_valid, tgt_key, target_starts, target_usable
) -> Int[Tensor, "batch source_pos"]:
    """Per source token, the first usable target token after it (by key) starting at its end; -1 if none.

    "After it" keeps a zero-width token from being its own label when both sides have one (a lone
    `▁` after BOS): identical tokenizers then label each token with the next one.
    """
    n_t = target_starts.shape[1]
    pos = torch.arange(n_t, device=target_starts.device).expand_as(target_starts)
    first = torch.searchsorted(tgt_key, src_key.contiguous(), right=True)
    # Next usable index at or after each position (reverse running minimum); n_t where none.
    usable_at = torch.where(target_usable, pos, n_t)
    next_usable = usable_at.flip(1).cummin(dim=1).values.flip(1)
    j = torch.where(first < n_t, next_usable.gather(1, first.clamp(max=n_t - 1)), n_t)
    hit = (j < n_t) & source_valid
    hit &= target_starts.gather(1, j.clamp(max=n_t - 1)) == source_ends
    return torch.where(hit, j, -1)


def align_batch(source, target) -> BatchAlignment:
    """Align two padded `stitch.batch.Batch`es of the same texts (source = model A, target = model B).

        >>> target_to_source, source_labels = align_batch(A.encode(texts), B.encode(texts))

    Uses `batch.byte_spans` when the batch carries them (exact to the byte), else `batch.spans`
    (characters: exact unless a token ends inside a character).
    """
    for name, b in (("source", source), ("target", target)):
        if not all(hasattr(b, a) for a in ("input_ids", "attention_mask", "spans", "special_mask")):
            raise TypeError(f"{name} must be a stitch.batch.Batch, got {type(b).__name__}")
    if source.input_ids.shape[0] != target.input_ids.shape[0]:
        raise ValueError(
            f"source and target batch sizes differ: {source.input_ids.shape[0]} vs "
            f"{target.input_ids.shape[0]}; both must encode the same texts"
        )
    if getattr(source, "texts", None) != getattr(target, "texts", None):
        raise ValueError("source.texts and target.texts differ; both batches must encode the same texts")
    s_spans, t_spans = _spans_of(source), _spans_of(target)
    return align_spans(
        s_spans[..., 1],
        source.attention_mask.bool(),
        source.special_mask.bool(),
        t_spans,
        target.attention_mask.bool(),
        target.special_mask.bool(),
        target.input_ids,
    )


def _spans_of(batch) -> Int[Tensor, "batch pos 2"]:
    spans = getattr(batch, "byte_spans", None)
    return (batch.spans if spans is None else spans).long()


@dataclass(frozen=True)
class TokenAlignment:
    """The alignment of one text (see the module docstring); build it with `TokenAlignment.build`."""

    text: str
    source_ids: Int[Tensor, " source_pos"]
    target_ids: Int[Tensor, " target_pos"]
    source_spans: Int[Tensor, "source_pos 2"]
    target_spans: Int[Tensor, "target_pos 2"]
    source_byte_spans: Int[Tensor, "source_pos 2"]
    target_byte_spans: Int[Tensor, "target_pos 2"]
    source_special: Bool[Tensor, " source_pos"]
    target_special: Bool[Tensor, " target_pos"]
    target_to_source: Int[Tensor, " target_pos"]
    source_labels: Int[Tensor, " source_pos"]
    source_next: Int[Tensor, " source_pos"]
    shared_boundaries: Int[Tensor, "n_shared 2"]

    @classmethod
    def build(
        cls, text: str, source_tokenizer, target_tokenizer, add_special_tokens: bool = True
    ) -> TokenAlignment:
        """Tokenize `text` with both tokenizers and align.

        >>> TokenAlignment.build("Hello world", A.tokenizer, B.tokenizer).target_to_source
        """
        check_text(text)
        check_tokenizer(source_tokenizer, "source_tokenizer")
        check_tokenizer(target_tokenizer, "target_tokenizer")
        src = token_spans_batch(source_tokenizer, [text], add_special_tokens, name="source_tokenizer")[0]
        tgt = token_spans_batch(target_tokenizer, [text], add_special_tokens, name="target_tokenizer")[0]
        return cls.from_spans(text, src, tgt)

    @classmethod
    def from_spans(cls, text: str, source: TokenSpans, target: TokenSpans) -> TokenAlignment:
        """Align two precomputed `TokenSpans` of `text`."""
        s, t = _tensors(source), _tensors(target)
        al = align_spans(
            s["byte_spans"][None, :, 1],
            s["valid"][None],
            s["special"][None],
            t["byte_spans"][None],
            t["valid"][None],
            t["special"][None],
            t["ids"][None],
        )
        t2s, shared = al.target_to_source[0], al.shared[0]
        pairs = torch.stack([t2s[shared], torch.nonzero(shared).flatten()], dim=1)
        return cls(
            text,
            s["ids"],
            t["ids"],
            s["spans"],
            t["spans"],
            s["byte_spans"],
            t["byte_spans"],
            s["special"],
            t["special"],
            t2s,
            al.source_labels[0],
            al.source_next[0],
            pairs,
        )


def _tensors(ts: TokenSpans) -> dict[str, Tensor]:
    n = len(ts.ids)
    return {
        "ids": torch.tensor(ts.ids, dtype=torch.long),
        "spans": torch.tensor(ts.spans, dtype=torch.long).reshape(n, 2),
        "byte_spans": torch.tensor(ts.byte_spans, dtype=torch.long).reshape(n, 2),
        "special": torch.tensor(ts.special, dtype=torch.bool),
        "valid": torch.ones(n, dtype=torch.bool),
    }
