"""THE pairing of A's and B's positions: which A position feeds each B position, its class, and the
source-grid labels. Splices, fits, CKA, scoring and training all read it from here.

    >>> pairing = pair_texts(A, B, ["some text"])
    >>> pairing.target_to_source         # [batch, pos_t]: the A position feeding B position j, -1 if none
    >>> pairing.classes                  # [batch, pos_t]: SHARED, LAGGING, NONE (or PADDING)
    >>> pairing.source_labels            # [batch, pos_s]: B's token starting where A token t ends
    >>> pairing.last_shared()            # [batch, pos_t]: the last shared B position at or before j (-1: none)
    >>> pairing.since_boundary(2)        # [batch, pos_t, 2]: B tokens j, j-1 read since then (-1: none)

Position classes on the target grid (B runs on its own tokens):
- shared: B token j ends exactly where the A token feeding it ends; both models have read the same prefix;
- lagging: the A token feeding j ends strictly before j does; B has read bytes A's state has not;
- none: no A token has finished yet (j gets the adapter's image of a zero state).
The source grid's labels are exactly the shared class: the label after A token t is the B token that
starts where t ends, which is B's next token after the B position sharing t's boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from stitch.alignment.align import align_batch
from stitch.batch import Batch
from stitch.checks import check_texts
from stitch.losses import IGNORE, next_token_labels

PADDING, SHARED, LAGGING, NONE = -1, 0, 1, 2
CLASSES = {"shared": SHARED, "lagging": LAGGING, "none": NONE}  # the position classes, by name


@dataclass
class Pairing:
    """The batches A and B run on, and for each B position the A position that feeds it (-1: none).

    `target_to_source is None` means one tokenization shared by both models (the identity pairing).
    """

    source: Batch
    target: Batch
    target_to_source: Int[Tensor, "batch pos_t"] | None
    source_labels: Int[Tensor, "batch pos_s"] | None = None
    source_next: Int[Tensor, "batch pos_s"] | None = None  # index in B of each source label (-1: none)

    @property
    def identical(self) -> bool:
        return self.target_to_source is None

    def feeding(self) -> Int[Tensor, "batch pos_t"]:
        """`target_to_source`, materialised as the identity when both models share a tokenization."""
        if self.target_to_source is not None:
            return self.target_to_source
        target = self.target
        pos = torch.arange(target.shape[1], device=target.device).expand(target.shape[0], -1)
        return torch.where(target.attention_mask.bool(), pos, -1)

    @property
    def classes(self) -> Int[Tensor, "batch pos_t"]:
        """SHARED / LAGGING / NONE per B position (PADDING at padding); see the module docstring."""
        t2s = self.feeding()
        valid = self.target.attention_mask.bool()
        source_end = _ends(self.source).to(t2s.device).gather(1, t2s.clamp(min=0))
        lagging = source_end < _ends(self.target)
        cls = torch.where(t2s < 0, NONE, torch.where(lagging, LAGGING, SHARED))
        return torch.where(valid, cls, PADDING)

    def target_labels(self) -> Int[Tensor, "batch pos_t"]:
        """B's own next tokens: what the target grid is scored on."""
        return next_token_labels(self.target)

    def labels(self, alignment: str) -> Int[Tensor, "batch pos"]:
        """The labels of a grid: B's next tokens (target) or the source-grid labels."""
        return self.target_labels() if alignment == "target" else self.source_labels

    def source_label_positions(self) -> Int[Tensor, "batch pos_s"]:
        """For each source-grid label, the B position predicting the same token on B's own grid (-1: none).

        That position (one before the label's B token) is the shared partner of the A token.
        """
        return torch.where(self.source_labels != IGNORE, self.source_next - 1, -1)

    def pairs(
        self, drop_special: bool = True, classes=None, keep_none: bool = False
    ) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
        """(batch row, A position, B position) of every target-grid pair a splice feeds.

        Padding and positions with no A token are dropped (kept with A position -1 when `keep_none`: a
        token-conditioned adapter still learns from B's own tokens there); special tokens on either side too
        with `drop_special` (their states, attention sinks with massive norms, would dominate a fit).
        `classes` (e.g. `["shared"]`) keeps only positions of those classes.
        """
        t2s = self.feeding()
        keep = self.target.attention_mask.bool() & ((t2s >= 0) | keep_none)
        if classes is not None:
            keep &= torch.isin(self.classes, torch.tensor([CLASSES[c] for c in classes], device=t2s.device))
        if drop_special:
            source_special = self.source.special_mask.to(t2s.device).gather(1, t2s.clamp(min=0)) & (t2s >= 0)
            keep &= ~self.target.special_mask & ~source_special
        rows, tgt = keep.nonzero(as_tuple=True)
        return rows, t2s[rows, tgt], tgt

    def last_shared(self) -> Int[Tensor, "batch pos_t"]:
        """For each B position j, the last B position k <= j of class SHARED (-1 when there is none).

        B's tokens (k, j] are what B has read beyond the last boundary both models share: empty at a shared
        position, the B tokens inside the current A token at a lagging one, every token so far at a "none" one.
        """
        pos = torch.arange(self.target.shape[1], device=self.target.device).expand(self.target.shape[0], -1)
        return torch.where(self.classes == SHARED, pos, -1).cummax(dim=1).values

    def since_boundary(self, window: int) -> Int[Tensor, "batch pos_t window"]:
        """The last `window` B tokens read since the last shared boundary, newest first (-1: no such token).

        Slot i of position j is j - i when j - i > `last_shared()[j]`, else -1; padding is -1 everywhere.
        So every slot of a shared position is -1, and slot 0 is set exactly when j is lagging or "none".
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an integer >= 1, got {window!r}")
        target = self.target
        pos = torch.arange(target.shape[1], device=target.device).expand(target.shape[0], -1)
        back = pos.unsqueeze(-1) - torch.arange(window, device=target.device)
        real = target.attention_mask.bool()
        keep = (back > self.last_shared().unsqueeze(-1)) & (back >= 0) & real.unsqueeze(-1)
        keep &= real.gather(1, back.clamp(min=0).flatten(1)).view(back.shape)  # left padding is no token
        return torch.where(keep, back, -1)

    def class_mask(self, name: str) -> Bool[Tensor, "batch pos_t"]:
        """B positions of one class (`"shared"`, `"lagging"`, `"none"`), or every real one (`"all"`)."""
        if name == "all":
            return self.target.attention_mask.bool()
        return self.classes == CLASSES[name]


def pair_texts(A, B, texts, padding_side: str = "right") -> Pairing:
    """Encode `texts` for A and B and pair the two tokenizations (identity when the tokenizer is shared).

    >>> pairing = pair_texts(A, B, ["some text"])
    """
    texts = check_texts(texts)
    source = A.encode(texts, padding_side=padding_side)
    if A.tokenizer is B.tokenizer:
        target = source if B.device == source.device else source.to(B.device)  # token ids cross, not states
        labels = next_token_labels(target)
        nxt = torch.where(labels != IGNORE, torch.arange(target.shape[1], device=target.device) + 1, -1)
        return Pairing(source, target, None, labels, nxt)
    return pair_batches(source, B.encode(texts, padding_side=padding_side))


def pair_batches(source: Batch, target: Batch) -> Pairing:
    """The pairing of two encodings of the same texts; index tensors live on B's (the target's) device."""
    al = align_batch(source if source.device == target.device else source.to(target.device), target)
    device = target.device
    return Pairing(
        source, target, al.target_to_source.to(device), al.source_labels.to(device), al.source_next.to(device)
    )


def _ends(batch: Batch) -> Int[Tensor, "batch pos"]:
    spans = batch.byte_spans if batch.byte_spans is not None else batch.spans
    return spans[..., 1]


# The names other modules used before pairing had a room of its own.
Aligned = Pairing
align_texts = pair_texts
