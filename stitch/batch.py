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
