"""What each step of a run reads and how fast it moves: the learning rate and the order of the texts.

    >>> order = TextOrder(n_texts=1000, batch_size=32, seed=0)
    >>> order.indices(step=40)                 # the texts of global step 40 (epoch 1, batch 9)
    >>> learning_rate(40, total=2000, config=config)
    >>> micro_batches(order.indices(40), parts=4)

The order is a pure function of (seed, epoch), so the step alone says which texts it reads: a resumed run
reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch

from stitch.training import distributed
from stitch.training.config import TrainConfig


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """The learning rate of step `step` (0-based) of `total`: linear warm-up, then the schedule."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, total - config.warmup)
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr


class TextOrder:
    """The texts of every global step: a slice of its epoch's permutation (seeded by seed and epoch)."""

    def __init__(self, n_texts: int, batch_size: int, seed: int):
        self.n_texts, self.batch_size, self.seed = n_texts, batch_size, seed
        self.per_epoch = n_texts // batch_size  # full batches only: every step weighs the same number of texts
        self._order: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n_texts, generator=generator))
        size = self.batch_size
        return self._order[1][index * size : (index + 1) * size].tolist()


def micro_batches(items: list[int], parts: int) -> list[list[int]]:
    """`parts` contiguous, non-empty micro-batches (sizes differ by at most one)."""
    n = len(items)
    return [items[n * i // parts : n * (i + 1) // parts] for i in range(parts)]


def steps_per_epoch(n_texts: int, config: TrainConfig, dist: distributed.Dist) -> int:
    """Full batches per pass over the texts; refuses a batch that the ranks and micro-batches cannot share."""
    need = dist.world_size * config.grad_accumulation  # every rank runs the same number of micro-batches
    if config.batch_size < need:
        raise ValueError(
            f"batch_size: {config.batch_size} texts per step cannot be shared by {dist.world_size} rank(s) in "
            f"{config.grad_accumulation} micro-batch(es) each; valid: batch_size >= {need} "
            "(world size × grad_accumulation)"
        )
    if n_texts < config.batch_size:
        raise ValueError(
            f"texts: {n_texts} training texts, fewer than batch_size={config.batch_size}; "
            "give more texts or a smaller batch_size"
        )
    return n_texts // config.batch_size
