"""Trainable residual adapters: LowRank and MLP. Both start as their skip path (identity or projection).

    >>> LowRank(4096, rank=64)(x)            # x + s · B(A(x)), B zero-initialised
    >>> LowRank(3072, 4096, rank=64)(x)      # P(x) + s · B(A(x)), P a learned Projection
    >>> MLP(4096, hidden=1024)(x)            # x + W₂ σ(W₁ LN(x) + b₁) + b₂

Starting as the skip path means step 0 of training is the identity (or an isometric projection), so
gradient-based training begins from the zero-training baseline rather than from noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from stitch.adapters.base import Adapter, check_width, register_adapter
from stitch.adapters.linear import Identity, Projection

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _widths(d_source: int, d_target: int | None) -> tuple[int, int]:
    d_source = check_width("d_source", d_source)
    return d_source, check_width("d_target", d_source if d_target is None else d_target)


def _skip(d_source: int, d_target: int) -> Adapter:
    # the identity when widths match; otherwise a learned isometric width change
    return Identity(d_source) if d_source == d_target else Projection(d_source, d_target)


@register_adapter
class LowRank(Adapter):
    """Residual low-rank adapter: `skip(x) + scale · up(down(x)) (+ bias)`, `rank` ≤ min(widths).

    >>> ad = LowRank(4096, rank=16, scale=1.0)
    >>> ad.n_parameters()                  # 2 · 4096 · 16
    """

    kind = "lowrank"

    def __init__(
        self,
        d_source: int,
        d_target: int | None = None,
        rank: int = 16,
        scale: float = 1.0,
        bias: bool = False,
    ):
        d_source, d_target = _widths(d_source, d_target)
        check_width("rank", rank)
        if rank > min(d_source, d_target):
            raise ValueError(
                f"rank must be in [1, min(d_source, d_target)={min(d_source, d_target)}], got {rank}"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        super().__init__(d_source, d_target)
        self.rank, self.scale = rank, float(scale)
        self.skip = _skip(d_source, d_target)
        self.down = nn.Linear(d_source, rank, bias=False)
        self.up = nn.Linear(rank, d_target, bias=False)
        nn.init.normal_(self.down.weight, std=d_source**-0.5)
        nn.init.zeros_(self.up.weight)
        self.bias = nn.Parameter(torch.zeros(d_target)) if bias else None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rank": self.rank, "scale": self.scale, "bias": self.bias is not None}

    def _map(self, x: Tensor) -> Tensor:
        out = self.skip(x) + self.scale * self.up(self.down(x))
        return out if self.bias is None else out + self.bias


@register_adapter
class MLP(Adapter):
    """Small residual MLP: `skip(x) + down(act(up(norm(x))))`, `down` zero-initialised.

        >>> MLP(4096, hidden=1024, activation="gelu", norm=True)

    `hidden` defaults to min(d_source, d_target). The LayerNorm on the branch input (`norm=True`) keeps
    the branch trainable on residual streams whose norms span orders of magnitude across layers.
    """

    kind = "mlp"

    def __init__(
        self,
        d_source: int,
        d_target: int | None = None,
        hidden: int | None = None,
        activation: str = "gelu",
        norm: bool = True,
    ):
        d_source, d_target = _widths(d_source, d_target)
        hidden = check_width("hidden", min(d_source, d_target) if hidden is None else hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        super().__init__(d_source, d_target)
        self.hidden, self.activation = hidden, activation
        self.skip = _skip(d_source, d_target)
        self.norm = nn.LayerNorm(d_source) if norm else None
        self.up = nn.Linear(d_source, hidden)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(hidden, d_target)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "hidden": self.hidden,
            "activation": self.activation,
            "norm": self.norm is not None,
        }

    def _map(self, x: Tensor) -> Tensor:
        h = x if self.norm is None else self.norm(x)
        return self.skip(x) + self.down(self.act(self.up(h)))
