"""Token-conditioned adapters: A's latest finished state *and* what B has read since the last shared boundary.

    >>> ad = TokenConditioned(d_source=3072, d_target=4096, window=2)
    >>> features = condition_features(embeds_b, pairing.since_boundary(ad.window))   # [batch, pos_t, d_condition]
    >>> ad(x_on_b_grid, features)                  # W x + V c + b: [..., d_target]
    >>> ad(x_on_b_grid)                            # no conditioning (zero): W x + b, the plain affine map
    >>> TokenConditioned.fit_stats(stats, ridge=1e-2, window=2)   # closed form on [x, c] -> y

On the target grid a B token that ends inside a longer A token (a *lagging* position) is fed A's state from
before the current A token, so B - whose lower blocks are skipped - would not know which token it is on. The
conditioning vector `c` tells it, without leaking context from B's lower layers: it is built from B's own
*input embeddings* (context-free) of the B tokens read since the last shared boundary
(`Pairing.since_boundary`), by one documented rule:

    c = [e(j), e(j-1), ..., e(j-window+1), flag]

where e(k) is B's input embedding of token k when k is after the last shared B position at or before j, and
zero otherwise (tokens further back than `window` are dropped), and `flag` is 1 when any token is (j is lagging
or "none"), else 0. At a shared position every slot and the flag are zero, so the adapter's input reduces to
A's state alone: `TokenConditioned` is then exactly the affine map `W x + b`. `d_condition = window·d_target + 1`
(B's embedding width is B's d_model, the adapter's d_target).

`TokenConditioned` is affine in `[x, c]` (closed-form fit from streamed `SufficientStats`, or trained);
`TokenConditionedMLP` adds a zero-initialised MLP on `[x, c]` (trainable; starts as the affine map).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from stitch.adapters.base import Adapter, check_width, eye_init, register_adapter
from stitch.adapters.closed_form import SufficientStats, solve_least_squares
from stitch.adapters.nonlinear import ACTIVATIONS


def condition_features(
    embeddings: Float[Tensor, "batch pos d_embed"], index: Int[Tensor, "batch pos window"]
) -> Float[Tensor, "batch pos d_condition"]:
    """`[e(index[..., 0]), ..., e(index[..., -1]), flag]`, zero where an index is -1 (see the module docstring)."""
    batch, pos, window = index.shape
    d = embeddings.shape[-1]
    valid = index >= 0
    flat = index.clamp(min=0).reshape(batch, pos * window, 1).expand(-1, -1, d)
    gathered = embeddings.gather(1, flat).view(batch, pos, window, d) * valid.unsqueeze(-1)
    flag = valid[..., :1].to(embeddings.dtype)
    return torch.cat([gathered.flatten(2), flag], dim=-1)


def is_conditioned(adapter) -> bool:
    """Whether `adapter` (or the module inside a DDP-style wrapper) takes a conditioning vector."""
    return bool(getattr(getattr(adapter, "module", adapter), "conditioned", False))


def d_condition(window: int, d_target: int) -> int:
    return window * d_target + 1


@register_adapter
class TokenConditioned(Adapter):
    """`y = x @ W + c @ V + b`: A's state `x` and B's conditioning vector `c` (zero at shared positions).

    Starts as the (truncated or zero-padded) identity on `x` with V = 0, so with equal widths it is the
    identity map until fitted or trained.
    """

    kind = "token_conditioned"
    conditioned: ClassVar[bool] = True

    def __init__(self, d_source: int, d_target: int | None = None, window: int = 2):
        d_source = check_width("d_source", d_source)
        d_target = check_width("d_target", d_source if d_target is None else d_target)
        self.window = check_width("window", window)
        super().__init__(d_source, d_target)
        self.d_condition = d_condition(self.window, d_target)
        self.weight = nn.Parameter(eye_init(d_target, d_source))
        self.condition_weight = nn.Parameter(torch.zeros(d_target, self.d_condition))
        self.bias = nn.Parameter(torch.zeros(d_target))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "window": self.window}

    def forward(
        self, x: Float[Tensor, "... d_source"], condition: Float[Tensor, "... d_condition"] | None = None
    ) -> Float[Tensor, "... d_target"]:
        """The map of `x` and `condition`; `condition=None` is the zero vector (a shared position)."""
        self._check_input(x)
        self._check_condition(x, condition)
        dtype = self.weight.dtype
        cond = None if condition is None else condition.to(dtype)
        return self._map(x.to(dtype), cond).to(x.dtype)

    def _map(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out if condition is None else out + F.linear(condition, self.condition_weight)

    def _check_condition(self, x: Tensor, condition: Tensor | None) -> None:
        if condition is None:
            return
        expected = (*x.shape[:-1], self.d_condition)
        if not isinstance(condition, Tensor) or tuple(condition.shape) != expected:
            got = tuple(condition.shape) if isinstance(condition, Tensor) else type(condition).__name__
            raise ValueError(
                f"condition: expected shape {list(expected)} (window·d_target + 1 = {self.d_condition}), got {got}"
            )

    @classmethod
    def fit_stats(cls, stats: SufficientStats, ridge: float = 0.0, window: int = 2) -> TokenConditioned:
        """Ridge least squares on the concatenated features `[x, c]` (statistics from `collect_stats(window=)`).

        The penalty is the same on W and V; the bias is never penalised.
        """
        window = check_width("window", window)
        d_source = stats.d_source - d_condition(window, stats.d_target)
        if d_source < 1:
            raise ValueError(
                f"stats: features of width {stats.d_source} are too narrow for window={window} and "
                f"d_target={stats.d_target} (need d_source + {d_condition(window, stats.d_target)}); "
                "collect them with collect_stats(..., window=window)"
            )
        W, b = solve_least_squares(stats, ridge=ridge, bias=True)
        ad = cls(d_source, stats.d_target, window=window)
        with torch.no_grad():
            ad.weight.copy_(W[:d_source].T)
            ad.condition_weight.copy_(W[d_source:].T)
            ad.bias.copy_(b)
        return ad.to(device=stats.cxx.device, dtype=stats.dtype)


@register_adapter
class TokenConditionedMLP(TokenConditioned):
    """`TokenConditioned` plus `W₂ σ(W₁ LN([x, c]) + b₁) + b₂` with W₂, b₂ zero-initialised (trainable).

    >>> TokenConditionedMLP(3072, 4096, window=2, hidden=1024)
    """

    kind = "token_conditioned_mlp"

    def __init__(
        self, d_source: int, d_target: int | None = None, window: int = 2, hidden: int = 256,
        activation: str = "gelu",
    ):
        super().__init__(d_source, d_target, window)
        self.hidden = check_width("hidden", hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: got {activation!r}; valid {sorted(ACTIVATIONS)}")
        self.activation = activation
        width = self.d_source + self.d_condition
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, self.hidden)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(self.hidden, self.d_target)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "hidden": self.hidden, "activation": self.activation}

    def _map(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        features = torch.cat([x, torch.zeros(*x.shape[:-1], self.d_condition, dtype=x.dtype, device=x.device)
                              if condition is None else condition], dim=-1)
        return super()._map(x, condition) + self.down(self.act(self.up(self.norm(features))))

    @classmethod
    def fit_stats(cls, stats: SufficientStats, ridge: float = 0.0, window: int = 2, hidden: int = 256):
        """The affine part fitted in closed form, the MLP at its zero init (a starting point for training)."""
        affine = TokenConditioned.fit_stats(stats, ridge=ridge, window=window)
        ad = cls(affine.d_source, affine.d_target, window=window, hidden=hidden)
        ad = ad.to(device=stats.cxx.device, dtype=stats.dtype)
        ad.load_state_dict(affine.state_dict(), strict=False)
        return ad
