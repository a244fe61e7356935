"""THE pairing of A's and B's positions: which A position feeds each B position, its class, and the
source-grid labels. Splices, fits, CKA, scoring and training all read it from here.

    >>> pairing = pair_texts(A, B, ["some text"])
    >>> pairing.target_to_source         # [batch, pos_t]: the A position feeding B position j, -1 if none
    >>> pairing.classes                  # [batch, pos_t]: SHARED, LAGGING, NONE (or PADDING)
    >>> pairing.source_labels            # [batch, pos_s]: B's token starting where A token t ends

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
        source_end = _ends(self.source).gather(1, t2s.clamp(min=0))
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
        self, drop_special: bool = True, classes=None
    ) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
        """(batch row, A position, B position) of every target-grid pair a splice feeds.

        Padding and positions with no A token are dropped; special tokens on either side too with
        `drop_special` (their states, attention sinks with massive norms, would dominate a fit).
        `classes` (e.g. `["shared"]`) keeps only positions of those classes.
        """
        t2s = self.feeding()
        keep = self.target.attention_mask.bool() & (t2s >= 0)
        if classes is not None:
            keep &= torch.isin(self.classes, torch.tensor([CLASSES[c] for c in classes], device=t2s.device))
        if drop_special:
            keep &= ~self.target.special_mask & ~self.source.special_mask.gather(1, t2s.clamp(min=0))
        rows, tgt = keep.nonzero(as_tuple=True)
        return rows, t2s[rows, tgt], tgt

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
        labels = next_token_labels(source)
        nxt = torch.where(labels != IGNORE, torch.arange(source.shape[1], device=source.device) + 1, -1)
        return Pairing(source, source, None, labels, nxt)
    return pair_batches(source, B.encode(texts, padding_side=padding_side))


def pair_batches(source: Batch, target: Batch) -> Pairing:
    """The pairing of two encodings of the same texts."""
    al = align_batch(source, target)
    device = source.device
    return Pairing(
        source, target, al.target_to_source.to(device), al.source_labels.to(device), al.source_next.to(device)
    )


def _ends(batch: Batch) -> Int[Tensor, "batch pos"]:
    spans = batch.byte_spans if batch.byte_spans is not None else batch.spans
    return spans[..., 1]


# The names other modules used before pairing had a room of its own.
Aligned = Pairing
align_texts = pair_texts
