"""Centred kernel alignment (Kornblith et al. 2019): exact, float64, and fast over all layer pairs.

    >>> from analyses.cka import linear_cka, rbf_cka, cka_matrix, MinibatchCKA
    >>> linear_cka(x, y)                       # x [n, d_source], y [n, d_target] -> float in [0, 1]
    >>> linear_cka(x, y, debiased=True)        # unbiased HSIC (Song et al. 2012); needs n >= 4 (else n >= 3)
    >>> rbf_cka(x, y, sigma_frac=0.5)          # RBF kernel, bandwidth = 0.5 x median distance
    >>> cka_matrix([a0, a1, a2], [b0, b1])     # Tensor [3, 2]; each layer's Gram is formed once

Numerics: inputs are cast to float64 and centred *before* any Gram is formed, so the huge common
offsets of LLM residual streams (massive activations ~1e4) cancel exactly instead of swamping the
products. Linear CKA is computed from n x n Grams (only their lower triangles are multiplied and
stored) or from d x d feature products, whichever costs less and fits in `GRAM_BYTES_LIMIT`; both
give the same number. Bad input raises a ValueError that names the argument; no path returns a
silent NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.gram import GRAM_BYTES_LIMIT, Side, gram_products
from analyses.samples import as_layers, check_pairing

__all__ = ["GRAM_BYTES_LIMIT", "MinibatchCKA", "cka_matrix", "linear_cka", "rbf_cka"]

KERNELS = ("linear", "rbf")
# Fewer samples than this make CKA meaningless: at n <= 2 any kernel's centred Gram is [[a, -a], [-a, a]],
# so CKA is 1 whatever the states; the unbiased HSIC divides by n(n - 3).
MIN_SAMPLES = {"linear": 3, "rbf": 3, "debiased": 4}
METHODS = ("auto", "gram", "feature")


def linear_cka(
    x: Float[Tensor, "n d_source"],
    y: Float[Tensor, "n d_target"],
    debiased: bool = False,
    *,
    method: str = "auto",
) -> float:
    """Linear CKA of two representations of the same n samples (rows pair up).

    >>> linear_cka(torch.randn(100, 10), torch.randn(100, 20))     # ~0.1: unrelated
    >>> linear_cka(x, x @ torch.linalg.qr(torch.randn(10, 10))[0])  # 1.0: rotation-invariant
    """
    return float(_cka([x], [y], ("x", "y"), debiased=debiased, method=method)[0, 0])


def rbf_cka(
    x: Float[Tensor, "n d_source"],
    y: Float[Tensor, "n d_target"],
    sigma_frac: float = 1.0,
    debiased: bool = False,
) -> float:
    """CKA with RBF kernels exp(-|a - b|^2 / (2 sigma^2)), sigma = `sigma_frac` x median distance.

    >>> rbf_cka(x, y, sigma_frac=0.5)      # Kornblith et al.'s bandwidth heuristic
    """
    return float(_cka([x], [y], ("x", "y"), debiased=debiased, kernel="rbf", sigma_frac=sigma_frac)[0, 0])


def cka_matrix(
    xs: Sequence[Float[Tensor, "n d_source"]],
    ys: Sequence[Float[Tensor, "n d_target"]],
    debiased: bool = False,
    *,
    kernel: str = "linear",
    sigma_frac: float = 1.0,
    method: str = "auto",
) -> Float[Tensor, "layer_x layer_y"]:
    """CKA of every layer in `xs` against every layer in `ys` (all with the same n samples).

        >>> res_a = [acts_a[l] for l in range(13)]; res_b = [acts_b[l] for l in range(13)]
        >>> cka_matrix(res_a, res_b)           # Tensor [13, 13], float64

    Each layer is centred and its Gram (or feature statistics) computed once, never per pair;
    `ys is xs` shares them too. `method` forces the Gram ("gram") or feature-space ("feature") form.
    """
    return _cka(xs, ys, ("xs", "ys"), debiased=debiased, kernel=kernel, sigma_frac=sigma_frac, method=method)


def _cka(xs, ys, names, *, debiased, kernel="linear", sigma_frac=1.0, method="auto") -> Tensor:
    sx, sy = prepare(xs, ys, names, debiased=debiased, kernel=kernel, sigma_frac=sigma_frac)
    return cka_from_sides(sx, sy, method=method)


def prepare(
    xs, ys, names=("xs", "ys"), *, debiased=False, kernel="linear", sigma_frac=1.0, allow_constant=False
) -> tuple[Side, Side]:
    """Validate and centre both sides once (shared if `ys is xs`); the input of `cka_from_sides`."""
    if not isinstance(debiased, bool):  # "yes", "no" and 0.0 would all be read as a choice silently
        raise TypeError(f"debiased: expected True or False, got {debiased!r} ({type(debiased).__name__})")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: {kernel!r} is not one of {list(KERNELS)}")
    if kernel == "rbf" and not (isinstance(sigma_frac, int | float) and 0 < sigma_frac < float("inf")):
        raise ValueError(
            f"sigma_frac: {sigma_frac!r}; expected a finite number > 0 (fraction of the median distance)"
        )
    min_n = MIN_SAMPLES["debiased" if debiased else kernel]
    opts = dict(min_n=min_n, allow_constant=allow_constant)
    mats_x = as_layers(xs, names[0], **opts)
    # The same layers on both sides (a model against itself): validated, centred and Grammed once.
    same = ys is xs or (
        isinstance(ys, list | tuple)
        and len(xs) == len(ys)
        and all(a is b for a, b in zip(xs, ys, strict=True))
    )
    mats_y = mats_x if same else as_layers(ys, names[1], **opts)
    check_pairing(mats_x, mats_y, names)
    side_x = Side(mats_x, names[0], kernel=kernel, debiased=debiased, sigma_frac=sigma_frac)
    side_y = (
        side_x if same else Side(mats_y, names[1], kernel=kernel, debiased=debiased, sigma_frac=sigma_frac)
    )
    return side_x, side_y


def cka_from_sides(
    sx: Side, sy: Side, *, method: str = "auto", perm: Tensor | None = None, hsic_only: bool = False
):
    """CKA matrix from prepared sides; `perm` re-pairs the samples of `sy` (for permutation nulls).

    With `hsic_only`, returns the (unnormalised) HSIC matrix and both self-HSIC vectors instead.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {list(METHODS)}")
    cross, self_x, self_y = gram_products(sx, sy, method=method, perm=perm)
    if sx.kernel == "linear" and sx.debiased:
        dy = sy.diag if perm is None else sy.diag[:, perm]
        cross = _debias(cross, sx.diag, dy, sx.n)
        self_x = _debias(torch.diag(self_x), sx.diag, sx.diag, sx.n).diagonal()
        self_y = _debias(torch.diag(self_y), sy.diag, sy.diag, sy.n).diagonal()
    if hsic_only:
        return cross, self_x, self_y
    _check_positive(self_x, sx.names, sx.debiased)
    _check_positive(self_y, sy.names, sy.debiased)
    return _normalise(cross, self_x, self_y)


def _normalise(cross: Tensor, self_x: Tensor, self_y: Tensor) -> Tensor:
    # sqrt of each factor, not of their product: two self-HSICs of ~1e200 each would overflow to inf.
    return cross / (self_x.sqrt()[:, None] * self_y.sqrt()[None, :])


def _debias(prod: Tensor, dx: Tensor, dy: Tensor, n: int) -> Tensor:
    """n(n-3) x the unbiased HSIC (Song et al. 2012) from products of centred-feature Grams.

    `prod[i, j]` = <K_i, L_j>, `dx[i]`/`dy[j]` their diagonals. Kornblith et al.'s feature-space
    rearrangement of the U-statistic; translation-invariant, so centring first costs nothing.
    """
    trace_x, trace_y = dx.sum(1), dy.sum(1)
    return prod - n / (n - 2) * (dx @ dy.T) + trace_x[:, None] * trace_y[None, :] / ((n - 1) * (n - 2))


def _check_positive(self_hsic: Tensor, names: list[str], debiased: bool) -> None:
    # A zero (or, debiased, negative) self-similarity makes CKA 0/0: say which layer, never return NaN.
    # Values beyond ~1e77 overflow the fourth powers in <K, K>: inf or NaN, which would give 0 or NaN.
    for i in torch.nonzero(~torch.isfinite(self_hsic)).flatten().tolist():
        raise ValueError(
            f"{names[i]}: HSIC with itself overflows float64 ({self_hsic[i].item()}); values this large "
            "(beyond ~1e77) need rescaling first (CKA is scale-invariant)"
        )
    for i in torch.nonzero(self_hsic <= 0).flatten().tolist():
        why = (
            "too few samples for the debiased estimator, or a near-constant representation"
            if debiased
            else "a (numerically) constant representation"
        )
        raise ValueError(
            f"{names[i]}: HSIC with itself is {self_hsic[i].item():.3g} <= 0, so CKA is undefined ({why})"
        )


# ---- streaming ----------------------------------------------------------------------------------------


class MinibatchCKA:
    """Streaming linear CKA (Nguyen et al. 2021): unbiased HSIC averaged over minibatches.

        >>> mb = MinibatchCKA()
        >>> for xs, ys in loader:              # per batch: lists of [batch, d] tensors, one per layer
        ...     mb.update(xs, ys)
        >>> mb.compute()                       # Tensor [len(xs), len(ys)]

    Memory is one minibatch plus [layer_x, layer_y] float64 accumulators, whatever the number of
    samples. Every batch needs >= 4 samples; each batch's HSIC is an unbiased estimate, so the mean over
    batches is too (CKA itself, a ratio, is consistent rather than unbiased).
    """

    def __init__(self) -> None:
        self.n_batches = 0
        self.n_samples = 0
        self._xy = self._xx = self._yy = None
        self._names: tuple[list[str], list[str]] | None = None

    def update(
        self,
        xs: Sequence[Float[Tensor, "batch d_source"]],
        ys: Sequence[Float[Tensor, "batch d_target"]],
    ) -> None:
        sx, sy = prepare(xs, ys, debiased=True, allow_constant=True)
        shape = (len(sx.feats), len(sy.feats))
        if self._xy is not None and self._xy.shape != shape:
            raise ValueError(
                f"xs, ys: {shape[0]} x {shape[1]} layers, but earlier batches had "
                f"{self._xy.shape[0]} x {self._xy.shape[1]}"
            )
        cross, self_x, self_y = cka_from_sides(sx, sy, hsic_only=True)
        scale = 1.0 / (sx.n * (sx.n - 3))  # HSIC_1's own normalisation: batches of any size average fairly
        if self._xy is None:
            self._xy, self._xx, self._yy = (
                torch.zeros_like(cross),
                torch.zeros_like(self_x),
                torch.zeros_like(self_y),
            )
            self._names = (sx.names, sy.names)
        self._xy += cross * scale
        self._xx += self_x * scale
        self._yy += self_y * scale
        self.n_batches += 1
        self.n_samples += sx.n

    def compute(self) -> Float[Tensor, "layer_x layer_y"]:
        if self._xy is None:
            raise ValueError("MinibatchCKA.compute: no batches yet; call update(xs, ys) at least once")
        _check_positive(self._xx, self._names[0], True)
        _check_positive(self._yy, self._names[1], True)
        return _normalise(self._xy, self._xx, self._yy)
