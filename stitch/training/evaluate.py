"""Held-out evaluation of a splice during training: spliced, native and no-information CE, loss recovered.

>>> base = baseline_losses(sp, eval_texts, dist, batch_size=8)
>>> evaluate(sp, eval_texts, dist, batch_size=8, baseline=base)["loss_recovered"]
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from stitch.losses import IGNORE, loss_recovered, next_token_labels, token_cross_entropy
from stitch.splice.splice import Splice
from stitch.training import distributed


@torch.no_grad()
def evaluate(sp: Splice, texts: list[str], dist: distributed.Dist, batch_size: int, baseline: dict) -> dict:
    """Held-out CE of the splice over every rank's share of `texts`, and the loss recovered given
    `baseline` (`baseline_losses`): (CE_no-information − CE_spliced) / (CE_no-information − CE_B-native)."""
    sums = torch.zeros(2, dtype=torch.float64)
    for chunk in _chunks(distributed.shard(texts, dist), batch_size):
        out = sp(chunk)
        sums += _ce_sums(out.logits, out.labels)
    total, count = distributed.all_reduce_sum(sums, dist).tolist()
    record = {"ce_spliced": _per_token(total, count, len(texts)), "tokens": int(count), **baseline}
    if baseline:
        recovered = loss_recovered(record["ce_spliced"], baseline["ce_native"], baseline["ce_no_information"])
        record["loss_recovered"] = None if math.isnan(recovered) else recovered  # JSON has no NaN
    return record


@torch.no_grad()
def baseline_losses(sp: Splice, texts: list[str] | None, dist: distributed.Dist, batch_size: int) -> dict:
    """B's native CE on the held-out texts, and its CE when fed the mean layer-M state at every position
    (the no-information baseline); empty without texts or on the source grid (whose labels are not B's)."""
    if texts is None or sp.alignment != "target":
        return {}
    B, layer = sp.B, sp.target_layer
    # B's own encoding is the target grid (`align_texts`); encoded once, read by both passes
    chunks = _chunks(distributed.shard(texts, dist), batch_size)
    targets = [B.encode(chunk, padding_side=sp.padding_side) for chunk in chunks]
    sums = torch.zeros(B.d_model + 1, dtype=torch.float64)
    for target in targets:
        keep = target.attention_mask.bool() & ~target.special_mask
        states = B.residuals(target, [layer])[layer][keep].double()
        sums += torch.cat([states.sum(0).cpu(), torch.tensor([float(len(states))], dtype=torch.float64)])
    sums = distributed.all_reduce_sum(sums, dist)
    mean = (sums[:-1] / sums[-1].clamp(min=1)).to(device=B.device, dtype=B.dtype)
    sums = torch.zeros(4, dtype=torch.float64)
    for target in targets:
        labels = next_token_labels(target)
        constant = mean.expand(*target.shape, -1).contiguous()
        native = _ce_sums(B.logits(target), labels)
        sums += torch.cat([native, _ce_sums(B.run_from(constant, layer, target), labels)])
    native, _, none, count = distributed.all_reduce_sum(sums, dist).tolist()
    return {"ce_native": _per_token(native, count, len(texts)), "ce_no_information": none / count}


def _per_token(total: float, count: float, n_texts: int) -> float:
    if count == 0:
        raise ValueError(
            f"eval_texts: no next-token label in {n_texts} texts; texts need at least two tokens"
        )
    return total / count


def _ce_sums(logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]) -> Tensor:
    """[summed token CE, number of labels] in float64 on the CPU, ready to be all-reduced."""
    total = token_cross_entropy(logits, labels).double().sum()
    return torch.stack([total, (labels != IGNORE).sum().double()]).cpu()


def _chunks(items: list[str], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
