"""Linear adapters: Identity, Linear, Affine, Projection and Procrustes, with closed-form fits.

    >>> ad = Procrustes.fit(x, y)                          # x [n, d_source], y [n, d_target]: one SVD
    >>> ad = Affine.fit(x, y, ridge=1e-2)                  # ridge least squares with a bias (ridge: relative)
    >>> stats = SufficientStats().update(x1, y1).update(x2, y2)
    >>> ad = Affine.fit_stats(stats, ridge=0.0)            # the same fit, streamed in O(d²) memory
    >>> ad(states)                                         # [..., d_source] -> [..., d_target]

Weights follow `nn.Linear`: `weight` is [d_target, d_source]; `ad.matrix` is the [d_source, d_target]
map in the `y = x @ M` convention of the fits. Fits run in float64 and return an adapter in the dtype
and on the device of the fitted data. `ridge` is dimensionless: a fraction of x's mean variance per
dimension (λ = ridge · tr(XᵀX_c)/d_source, `stitch.adapters.closed_form.ridge_penalty`), so the same
value means the same for any number of pairs, any width and any activation scale.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from stitch import kinds
from stitch.adapters.base import Adapter, adapter_class, check_width, eye_init, register_adapter
from stitch.adapters.closed_form import SufficientStats, solve_least_squares, solve_procrustes


@register_adapter
class Identity(Adapter):
    """The identity map; `Identity()` accepts any width, `Identity(d)` checks it.

    >>> Identity()(x) is x
    """

    kind = "identity"

    def __init__(self, d: int | None = None):
        d = check_width("d", d, allow_none=True)
        super().__init__(d, d)

    def config(self) -> dict[str, Any]:
        return {"d": self.d_source}

    def _map(self, x: Tensor) -> Tensor:
        return x


class _Dense(Adapter):
    """`y = x @ weight.T (+ bias)`: the shared body of Linear, Affine and Projection."""

    def __init__(self, d_source: int, d_target: int | None, bias: bool):
        d_source = check_width("d_source", d_source)
        d_target = check_width("d_target", d_source if d_target is None else d_target)
        super().__init__(d_source, d_target)
        self.weight = nn.Parameter(eye_init(d_target, d_source))
        self.bias = nn.Parameter(torch.zeros(d_target)) if bias else None

    @property
    def matrix(self) -> Float[Tensor, "d_source d_target"]:
        """The map in the `y = x @ matrix` convention."""
        return self.weight.T

    def _map(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def _load_fit(self, stats: SufficientStats, W: Tensor, b: Tensor | None) -> _Dense:
        return _assign(self, stats, weight=W.T, bias=b)


@register_adapter
class Linear(_Dense):
    """`y = x @ W`, no bias; starts as the (truncated or zero-padded) identity.

    >>> Linear.fit(x, y, ridge=0.0)
    """

    kind = "linear"
    HAS_BIAS = False

    def __init__(self, d_source: int, d_target: int | None = None):
        super().__init__(d_source, d_target, bias=self.HAS_BIAS)

    @classmethod
    def fit(cls, x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], ridge: float = 0.0):
        """Ridge least squares `min ‖Y − XW‖² + λ‖W‖²`, λ = ridge · tr(XᵀX_c)/d_source (relative ridge).

        `ridge=1e-2` penalises at 1% of x's mean variance per dimension, whatever n, width or scale;
        `ridge=0` is exact least squares (see `stitch.adapters.closed_form` for the fallbacks).
        """
        return cls.fit_stats(SufficientStats().update(x, y), ridge=ridge)

    @classmethod
    def fit_stats(cls, stats: SufficientStats, ridge: float = 0.0):
        """The same fit from streamed statistics (the same relative `ridge`)."""
        W, b = solve_least_squares(stats, ridge=ridge, bias=cls.HAS_BIAS)
        return cls(stats.d_source, stats.d_target)._load_fit(stats, W, b)


@register_adapter
class Affine(Linear):
    """`y = x @ W + b`; the closed-form fit centres both sides and never penalises b.

    >>> Affine.fit(x, y, ridge=1e-3)
    """

    kind = "affine"
    HAS_BIAS = True


@register_adapter
class Projection(_Dense):
    """A learned width change (e.g. 3072 → 4096), initialised as a random semi-orthogonal isometry.

        >>> Projection(3072, 4096)(x).shape        # [..., 4096]

    `init="orthogonal"` (default) preserves norms from the first step; `init="eye"` copies dimensions.
    """

    kind = "projection"
    INITS = ("orthogonal", "eye")

    def __init__(self, d_source: int, d_target: int, bias: bool = False, init: str = "orthogonal"):
        if init not in self.INITS:
            raise ValueError(f"init must be one of {self.INITS}, got {init!r}")
        super().__init__(d_source, d_target, bias=bool(bias))
        self.init = init
        if init == "orthogonal":
            nn.init.orthogonal_(self.weight)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "bias": self.bias is not None, "init": self.init}


@register_adapter
class Procrustes(Adapter):
    """`y = s · x @ W (+ b)` with W orthogonal (semi-orthogonal when widths differ).

        >>> ad = Procrustes.fit(x, y, scale=True, translation=True)
        >>> ad.matrix.T @ ad.matrix                   # identity when d_source <= d_target

    Trained by gradient, W leaves the orthogonal group; call `project_()` after each optimiser step
    (projected gradient descent) to snap it back to the nearest (semi-)orthogonal matrix.
    """

    kind = "procrustes"

    def __init__(
        self, d_source: int, d_target: int | None = None, scale: bool = False, translation: bool = False
    ):
        d_source = check_width("d_source", d_source)
        d_target = check_width("d_target", d_source if d_target is None else d_target)
        super().__init__(d_source, d_target)
        self.weight = nn.Parameter(eye_init(d_target, d_source))
        self.scale = nn.Parameter(torch.ones(())) if scale else None
        self.bias = nn.Parameter(torch.zeros(d_target)) if translation else None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scale": self.scale is not None, "translation": self.bias is not None}

    @property
    def matrix(self) -> Float[Tensor, "d_source d_target"]:
        return self.weight.T

    def _map(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight)
        out = out if self.scale is None else out * self.scale
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def project_(self) -> Procrustes:
        """Replace W by the nearest (semi-)orthogonal matrix (polar factor, via SVD); returns self."""
        U, _, Vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
        self.weight.copy_(U @ Vh)
        return self

    @classmethod
    def fit(
        cls,
        x: Float[Tensor, "n d_source"],
        y: Float[Tensor, "n d_target"],
        scale: bool = False,
        translation: bool = False,
    ) -> Procrustes:
        """Orthogonal Procrustes by one SVD of XᵀY (centred when `translation`)."""
        return cls.fit_stats(SufficientStats().update(x, y), scale=scale, translation=translation)

    @classmethod
    def fit_stats(cls, stats: SufficientStats, scale: bool = False, translation: bool = False) -> Procrustes:
        """The same fit from streamed statistics."""
        W, s, b = solve_procrustes(stats, scale=scale, translation=translation)
        ad = cls(stats.d_source, stats.d_target, scale=scale, translation=translation)
        return _assign(ad, stats, weight=W.T, bias=b, scale=s if scale else None)


CLOSED_FORM = kinds.CLOSED_FORM  # token_conditioned: stitch.adapters.conditioned


def fit_closed_form(kind: str, stats: SufficientStats, **options: Any) -> Adapter:
    """Fit the adapter `kind` from statistics: `fit_closed_form("affine", stats, ridge=1e-3)`."""
    cls = adapter_class(kind)
    if cls.kind not in CLOSED_FORM:
        raise ValueError(f"adapter kind {kind!r} has no closed-form fit; closed-form kinds: {CLOSED_FORM}")
    return cls.fit_stats(stats, **options)


@torch.no_grad()
def _assign(ad: Adapter, stats: SufficientStats, **tensors: Tensor | None) -> Adapter:
    # fitted in float64; hand back an adapter in the dtype and on the device of the data it was fitted on
    ad = ad.to(device=stats.cxx.device, dtype=stats.dtype)
    for name, value in tensors.items():
        if value is not None:
            getattr(ad, name).copy_(value)
    return ad
