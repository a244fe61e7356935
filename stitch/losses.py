"""The one loss normalisation in stitch: mean next-token cross-entropy over unmasked labels.

>>> labels = next_token_labels(batch)            # -100 where there is no next real token
>>> loss = mean_cross_entropy(logits, labels)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from stitch.batch import Batch

IGNORE = -100


def next_token_labels(batch: Batch) -> Int[Tensor, "batch pos"]:
    """`labels[b, t] = input_ids[b, t + 1]` where both t and t + 1 are real tokens, else -100."""
    labels = torch.full_like(batch.input_ids, IGNORE)
    real = batch.attention_mask.bool()
    valid = real[:, :-1] & real[:, 1:]
    labels[:, :-1] = torch.where(valid, batch.input_ids[:, 1:], IGNORE)
    return labels


def token_cross_entropy(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """Per-token cross-entropy in float32, 0 where the label is masked (on the logits' device)."""
    labels = labels.to(logits.device)  # a model sharded by device_map puts its logits on its last device
    flat = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return flat.view(labels.shape)


def mean_cross_entropy(logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]) -> Tensor:
    """Mean over every unmasked label in the batch (not a mean of per-sequence means)."""
    n = (labels != IGNORE).sum()
    if n == 0:
        raise ValueError("labels: every label is masked; texts need at least two tokens to have a next token")
    return token_cross_entropy(logits, labels).sum() / n

