"""A padded batch of tokenized texts, with the character span of every token.

>>> batch = A.encode(["some text", "more"])      # a Batch
>>> batch.input_ids.shape, batch.spans[0, :3]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """Token ids, masks, positions and character spans of a padded batch.

    `spans[b, t] = (start, end)` in characters of `texts[b]` (`byte_spans` in its UTF-8 bytes, which is what
    alignment compares, exact where a token ends inside a character); special tokens are zero-width and
    padding is `(-1, -1)`. `position_ids` count real tokens only, so left padding does not shift positions.
    `tokenizer_fingerprint` identifies the tokenizer that encoded the texts (see `tokenizer_fingerprint`);
    a model refuses a batch stamped with another tokenizer's. Batches built from raw ids carry None.
    """

    texts: list[str]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    spans: Int[Tensor, "batch pos 2"]
    special_mask: Bool[Tensor, "batch pos"]
    padding_side: str = "right"
    byte_spans: Int[Tensor, "batch pos 2"] | None = None  # the same spans in UTF-8 bytes (exact alignment)
    tokenizer_fingerprint: str | None = None  # of the tokenizer that made input_ids (None: unknown)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> Batch:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor field by name (byte_spans only when present)."""
        fields = ("input_ids", "attention_mask", "position_ids", "spans", "special_mask", "byte_spans")
        return {k: getattr(self, k) for k in fields if getattr(self, k) is not None}

    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)


_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "position_ids": 0, "spans": -1, "special_mask": True, "byte_spans": -1}


def concat_batches(batches: list[Batch]) -> Batch:
    """The rows of several batches (one padding side, one tokenizer) as one, padded to the widest.

    >>> concat_batches([A.encode(texts[:8]), A.encode(texts[8:])]).shape   # (len(texts), widest)
    """
    first = batches[0]
    width = max(b.shape[1] for b in batches)
    fields = {}
    for name in first.tensors():
        parts = [_pad_width(getattr(b, name), width, _PAD_VALUES[name], first.padding_side) for b in batches]
        fields[name] = torch.cat([p.to(parts[0].device) for p in parts])
    texts = [t for b in batches for t in b.texts]
    return dataclasses.replace(first, texts=texts, **fields)


def _pad_width(t: Tensor, width: int, value, side: str) -> Tensor:
    extra = width - t.shape[1]
    if extra == 0:
        return t
    shape = (t.shape[0], extra, *t.shape[2:])
    pad = torch.full(shape, value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if side == "left" else [t, pad], dim=1)


def positions_from_mask(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions counting real tokens only (what HF `generate` does for left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A short hash of what a tokenizer's ids mean (its vocabulary, added tokens included).

    >>> tokenizer_fingerprint(A.tokenizer) == tokenizer_fingerprint(copy.deepcopy(A.tokenizer))
    True

    Two tokenizers with one vocabulary give the same ids the same meaning, so they share a fingerprint
    even when they add different special tokens around a text. None when the vocabulary is unreadable.
    """
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    items = sorted((int(i), str(t)) for t, i in vocab.items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
