"""Tokenization of a HookedLM: texts (or token ids) to a padded `Batch` with every token's character span.

    >>> batch = A.encode(["some text", "more text"], padding_side="left")
    >>> batch = A.encode([long_text], overflow="chunk", max_length=512, stride=64)   # one row per chunk
    >>> A.as_batch(torch.tensor([[1, 2, 3]]))          # from ids, as TransformerLens takes them (no spans)

A mixin: the model class (`stitch.models.hooked.HookedLM`) gives `tokenizer`, `n_ctx`, `vocab_size` and
`device` (the embedding's: where inputs go).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from stitch.alignment.spans import token_spans_batch
from stitch.batch import Batch, positions_from_mask, tokenizer_fingerprint
from stitch.checks import check_choice, check_max_length, check_texts
from stitch.chunks import OVERFLOW, fit_to_length


class Tokenization:
    """`encode`, `as_batch`, `pad_token_id`, `tokenizer_fingerprint` of a model with a tokenizer."""

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        padding_side: str = "right",
        add_special_tokens: bool = True,
        max_length: int | None = None,
        overflow: str = "error",
        stride: int = 0,
    ) -> Batch:
        """Tokenize and pad texts, keeping the character span of every token (special tokens zero-width).

        A text longer than `max_length` tokens (default: the model's context) is refused (`overflow="error"`),
        cut to its first `max_length` tokens ("truncate"), or cut into several texts that fit ("chunk", each
        chunk after the first repeating `stride` tokens of context; see `stitch.chunks`): then the batch has
        one row per chunk and `batch.texts` holds the chunks.
        """
        texts = check_texts(texts)
        check_choice("padding_side", padding_side, ("right", "left"))
        check_choice("overflow", overflow, OVERFLOW)
        limit = max_length if max_length is not None else self.n_ctx
        if max_length is not None or stride:
            check_max_length(max_length if max_length is not None else self.n_ctx or 0, stride)
        encoded = token_spans_batch(self.tokenizer, texts, add_special_tokens)
        if limit is not None:
            texts, encoded = fit_to_length(
                self.tokenizer, texts, encoded, limit, overflow, stride, add_special_tokens,
                None if max_length is not None else f"the model's {limit} positions",
            )
        batch = _pad(texts, encoded, self.pad_token_id, padding_side, self.device)
        return dataclasses.replace(batch, tokenizer_fingerprint=self.tokenizer_fingerprint)

    @property
    def tokenizer_fingerprint(self) -> str | None:
        """The fingerprint `encode` stamps on its batches (see `stitch.batch.tokenizer_fingerprint`)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None or cached[0] is not self.tokenizer:  # recomputed if the tokenizer is swapped
            cached = self.__dict__["_fingerprint"] = (self.tokenizer, tokenizer_fingerprint(self.tokenizer))
        return cached[1]

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, else EOS, else 0: padding is masked, so any id inside the vocabulary will do."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None and 0 <= candidate < self.vocab_size:
                return candidate
        return 0

    def as_batch(self, batch: Batch | Tensor | str | Sequence[str]) -> Batch:
        """A Batch from texts, from a Batch, or from token ids `[pos]` / `[batch, pos]` (as TransformerLens takes).

        Batches built from ids carry no character spans (-1), so they cannot be aligned to another tokenizer.
        """
        if isinstance(batch, Batch):
            return batch
        if isinstance(batch, Tensor):
            return self._batch_from_ids(batch)
        return self.encode(batch)

    def _batch_from_ids(self, ids: Tensor) -> Batch:
        if ids.dim() not in (1, 2) or ids.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError(
                f"tokens: expected integer token ids of shape [pos] or [batch, pos], got "
                f"{ids.dtype} of shape {tuple(ids.shape)}"
            )
        ids = ids.long().view(-1, ids.shape[-1]).to(self.device)
        mask = torch.ones_like(ids)
        special = torch.isin(
            ids, torch.tensor(self.tokenizer.all_special_ids, dtype=torch.long, device=ids.device)
        )
        texts = self.tokenizer.batch_decode(ids.tolist())
        spans = torch.full((*ids.shape, 2), -1, dtype=torch.long, device=ids.device)
        return Batch(texts, ids, mask, positions_from_mask(mask), spans, special)


def _pad(texts, encoded, pad_id: int, side: str, device) -> Batch:
    """Stack per-text token ids and spans into padded tensors (spans of padding are (-1, -1))."""
    width = max(len(enc.ids) for enc in encoded)
    shape = (len(texts), width)
    ids, mask = torch.full(shape, pad_id, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    spans, byte_spans = (
        torch.full((*shape, 2), -1, dtype=torch.long),
        torch.full((*shape, 2), -1, dtype=torch.long),
    )
    special = torch.ones(shape, dtype=torch.bool)
    for row, enc in enumerate(encoded):
        n = len(enc.ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(enc.ids, dtype=torch.long)
        mask[row, cols] = 1
        spans[row, cols] = torch.tensor(enc.spans, dtype=torch.long).view(n, 2)
        byte_spans[row, cols] = torch.tensor(enc.byte_spans, dtype=torch.long).view(n, 2)
        special[row, cols] = torch.tensor(enc.special, dtype=torch.bool)
    batch = Batch(texts, ids, mask, positions_from_mask(mask), spans, special, side, byte_spans)
    return batch.to(device)
