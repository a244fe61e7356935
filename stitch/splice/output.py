"""What a splice returns: B's logits, the labels they are scored on, and the two batches; merged per batch.

    >>> out = sp(texts)                           # a SpliceOutput
    >>> out.logits, out.labels, out.loss          # the loss is the mean CE over every label
    >>> merge_outputs([sp(texts[:8]), sp(texts[8:])], "right")   # what sp(texts, batch_size=8) returns
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from stitch.batch import Batch, concat_batches
from stitch.losses import IGNORE, mean_cross_entropy


@dataclass
class SpliceOutput:
    """B's logits under the splice, the labels they are scored on, and the mean loss over those labels.

    The loss is computed when first read, so a batch without any label (one-token texts) still has logits.
    """

    logits: Float[Tensor, "batch pos vocab"]
    labels: Int[Tensor, "batch pos"]
    source: Batch
    target: Batch

    @functools.cached_property
    def loss(self) -> Tensor:
        return mean_cross_entropy(self.logits, self.labels)


def merge_outputs(outputs: list[SpliceOutput], padding_side: str) -> SpliceOutput:
    """One output from per-batch outputs: logits, labels and batches padded to the widest batch."""
    width = max(out.logits.shape[1] for out in outputs)
    logits = torch.cat([_pad_to(o.logits, width, 0.0, padding_side) for o in outputs])
    labels = torch.cat([_pad_to(o.labels, width, IGNORE, padding_side) for o in outputs])
    return SpliceOutput(
        logits, labels, concat_batches([o.source for o in outputs]), concat_batches([o.target for o in outputs])
    )


def _pad_to(t: Tensor, width: int, value, side: str) -> Tensor:
    extra = width - t.shape[1]
    pad = [0, 0] * (t.dim() - 2) + ([extra, 0] if side == "left" else [0, extra])
    return F.pad(t, pad, value=value)
