"""Closed-form fits from streaming float64 sufficient statistics of paired states.

    >>> stats = SufficientStats()
    >>> for x, y in pairs:                     # x [n, d_source], y [n, d_target], any number of chunks
    ...     stats.update(x, y)
    >>> W, s, b = solve_procrustes(stats, scale=True, translation=True)   # y ≈ s · x @ W + b
    >>> W, b = solve_least_squares(stats, ridge=1e-3, bias=True)          # y ≈ x @ W + b
    >>> ridge_penalty(stats, ridge=1e-3)                                  # the λ that ridge=1e-3 adds

Ridge is relative to the data, so one value means the same for 1K or 1M pairs, any width and any
activation scale: the penalty added to XᵀX is λ = ridge · tr(XᵀX_c)/d_source, the mean eigenvalue of
the centred Gram — `ridge` is a fraction of x's mean variance per dimension. Per pair, the fit solves
min (1/n)‖Y − XW‖² + ridge · σ̄² ‖W‖² with σ̄² = tr(Cov x)/d_source; `ridge=1` shrinks a direction of
average variance by half. `ridge=0` is exact least squares.

Memory is O(d²) whatever the number of pairs: counts, means, the centred XᵀX and XᵀY and the centred
sum of squares of y. Chunks are merged with Chan et al.'s pairwise update, so residual streams with
large offsets (massive activations) lose no precision to a `XᵀX − n·μμᵀ` cancellation.

Degenerate inputs and the documented fallbacks:
- NaN/inf, mismatched n, empty or non-2-D inputs, integer dtypes: ValueError/TypeError naming x or y.
- Finite values whose products overflow float64 (|values| beyond ~1e154): ValueError naming x or y.
- x with no variance (all rows equal, e.g. zeros) or a zero cross-covariance: ValueError.
- Rank-deficient x (rank-1, n < d_source) with `ridge=0`: a UserWarning, then the minimum-norm
  least-squares solution (pseudo-inverse on the eigenvalues of XᵀX), as `numpy.linalg.lstsq` returns.
- Rank-deficient cross-covariance in Procrustes: a UserWarning, then one valid (semi-)orthogonal
  solution (the SVD's completion of the basis); it fits the data exactly as well as any other.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float
from torch import Tensor

_EPS64 = torch.finfo(torch.float64).eps


def as_pairs(x, y) -> tuple[Tensor, Tensor]:
    """Check paired states: 2-D float tensors with the same number of rows (finiteness checked later)."""
    x, y = _as_tensor("x", x), _as_tensor("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must pair row by row: x has n={x.shape[0]} rows, y has n={y.shape[0]}")
    return x, y


def _as_tensor(name: str, value) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if not (t.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [n, d], got shape {tuple(t.shape)}; "
            f"select real positions first, e.g. {name}[mask]"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have n >= 1 rows and d >= 1 columns, got shape {tuple(t.shape)}")
    return t


def _check_finite(name: str, chunk: Tensor, column_mean: Tensor, offset: int) -> None:
    # NaN/inf anywhere makes its column's float64 mean non-finite: a d-sized test instead of an n·d scan
    if torch.isfinite(column_mean).all():
        return
    bad = ~torch.isfinite(chunk).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or inf in {rows.numel()} row(s) of this update, first at "
            f"row {offset + int(rows[0])}; all values must be finite"
        )
    raise ValueError(f"{name} overflows float64 (|values| near 1e308); rescale it before fitting")


def _check_moments(cxx: Tensor, cxy: Tensor, syy: Tensor) -> None:
    # finite inputs can still square past float64's range (|x| ~ 1e160 → x² ~ 1e320 = inf); an inf
    # here would surface as a LinAlgError from eigh/svd far from its cause
    for name, moment in (("x", cxx), ("y", syy), ("x and y", cxy)):
        if not torch.isfinite(moment).all():
            raise ValueError(
                f"{name}: products of the values overflow float64 (|values| beyond ~1e154 make "
                "x·x exceed 1e308); rescale the states before fitting"
            )


class SufficientStats:
    """Streaming float64 statistics of paired states `(x, y)`: enough for every closed-form fit.

        >>> stats = SufficientStats()
        >>> stats.update(x_chunk, y_chunk).update(x_next, y_next)
        >>> stats.n, stats.mean_x.shape, stats.cxx.shape      # (count, [d_source], [d_source, d_source])
        >>> Affine.fit_stats(stats, ridge=0.0)

    `chunk_rows` bounds the float64 working memory of one `update` (rows converted at a time).
    The statistics live on the device of the first update; fitted adapters take its dtype.
    """

    def __init__(self, chunk_rows: int = 16384):
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
        self.chunk_rows = chunk_rows
        self.n = 0
        self.dtype: torch.dtype | None = None
        self.mean_x = self.mean_y = self.cxx = self.cxy = self.syy = None

    @property
    def d_source(self) -> int | None:
        return None if self.mean_x is None else self.mean_x.numel()

    @property
    def d_target(self) -> int | None:
        return None if self.mean_y is None else self.mean_y.numel()

    def update(self, x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"]) -> SufficientStats:
        """Add the pairs `(x[i], y[i])`; returns self so updates chain."""
        x, y = as_pairs(x, y)
        self._check_widths(x.shape[1], y.shape[1])
        for start in range(0, x.shape[0], self.chunk_rows):
            stop = start + self.chunk_rows
            self._add_chunk(x[start:stop], y[start:stop], start)
        return self

    def merge(self, other: SufficientStats) -> SufficientStats:
        """Fold in statistics gathered elsewhere (another process, another shard); returns self."""
        if not isinstance(other, SufficientStats):
            raise TypeError(f"other must be a SufficientStats, got {type(other).__name__}")
        if other.n:
            self._check_widths(other.d_source, other.d_target)
            self._combine(other.n, other.mean_x, other.mean_y, other.cxx, other.cxy, other.syy, other.dtype)
            _check_moments(self.cxx, self.cxy, self.syy)
        return self

    def _check_widths(self, d_source: int, d_target: int) -> None:
        if self.n and (d_source, d_target) != (self.d_source, self.d_target):
            raise ValueError(
                f"widths changed between updates: got (d_source, d_target)=({d_source}, "
                f"{d_target}), earlier updates had ({self.d_source}, {self.d_target})"
            )

    def _add_chunk(self, x: Tensor, y: Tensor, offset: int) -> None:
        device = x.device if self.cxx is None else self.cxx.device
        xc = x.to(device=device, dtype=torch.float64)
        yc = y.to(device=device, dtype=torch.float64)
        mx, my = xc.mean(0), yc.mean(0)
        _check_finite("x", xc, mx, offset)
        _check_finite("y", yc, my, offset)
        # centre in place when the float64 copy is ours (it always is unless the input was float64)
        xc = xc.sub_(mx) if xc.data_ptr() != x.data_ptr() else xc - mx
        yc = yc.sub_(my) if yc.data_ptr() != y.data_ptr() else yc - my
        syy = torch.linalg.vector_norm(yc).square()
        self._combine(xc.shape[0], mx, my, xc.T @ xc, xc.T @ yc, syy, x.dtype)
        _check_moments(self.cxx, self.cxy, self.syy)

    def _combine(self, n_b, mx_b, my_b, cxx_b, cxy_b, syy_b, dtype) -> None:
        if self.n == 0:
            self.n, self.dtype = n_b, dtype
            self.mean_x, self.mean_y = mx_b.clone(), my_b.clone()
            self.cxx, self.cxy, self.syy = cxx_b.clone(), cxy_b.clone(), syy_b.clone()
            return
        n = self.n + n_b
        dx, dy = mx_b - self.mean_x, my_b - self.mean_y
        w = self.n * n_b / n  # Chan et al.: the between-chunk term, weighted by n_a·n_b/n
        self.cxx += cxx_b + w * torch.outer(dx, dx)
        self.cxy += cxy_b + w * torch.outer(dx, dy)
        self.syy += syy_b + w * (dy * dy).sum()
        self.mean_x += dx * (n_b / n)
        self.mean_y += dy * (n_b / n)
        self.n = n

    def xx(self, centered: bool) -> Float[Tensor, "d_source d_source"]:
        """XᵀX, about the mean when `centered` (for fits with a bias), else about zero."""
        self._require_data()
        return self.cxx if centered else self.cxx + self.n * torch.outer(self.mean_x, self.mean_x)

    def xy(self, centered: bool) -> Float[Tensor, "d_source d_target"]:
        """XᵀY, about the means when `centered`, else about zero."""
        self._require_data()
        return self.cxy if centered else self.cxy + self.n * torch.outer(self.mean_x, self.mean_y)

    def _require_data(self) -> None:
        if self.n == 0:
            raise ValueError("stats has n=0 pairs; call stats.update(x, y) before fitting")

    def __repr__(self) -> str:
        return f"SufficientStats(n={self.n}, d_source={self.d_source}, d_target={self.d_target})"


def check_ridge(ridge) -> float:
    """A finite, non-negative relative ridge (a fraction of x's mean variance; see `ridge_penalty`)."""
    number = isinstance(ridge, (int, float)) and not isinstance(ridge, bool)
    if not number or not 0 <= ridge < float("inf"):
        raise ValueError(
            f"ridge: got {ridge!r}; valid: a finite number >= 0 (a fraction of x's mean variance "
            "per dimension)"
        )
    return float(ridge)


def ridge_penalty(stats: SufficientStats, ridge: float) -> float:
    """The absolute λ added to XᵀX for a relative `ridge`: ridge · tr(XᵀX_c) / d_source.

        >>> ridge_penalty(stats, 1e-2) / stats.n     # 1% of x's mean variance per dimension

    Duplicating the pairs or scaling x scales λ exactly as it scales XᵀX, so the fitted map is unchanged.
    A fit without bias regularises the uncentred XᵀX but is scaled by the same centred trace; only for
    x with no variance at all does it fall back to the uncentred trace.
    """
    ridge = check_ridge(ridge)
    gram = stats.xx(centered=True)
    scale = gram.diagonal().sum() or stats.xx(centered=False).diagonal().sum()
    return ridge * float(scale.detach()) / gram.shape[0]


def solve_least_squares(
    stats: SufficientStats, ridge: float = 0.0, bias: bool = True
) -> tuple[Float[Tensor, "d_source d_target"], Float[Tensor, " d_target"] | None]:
    """Ridge least squares `y ≈ x @ W (+ b)` in float64; the bias is never penalised.

    `ridge` is relative (λ = `ridge_penalty(stats, ridge)`, a fraction of the centred Gram's mean
    eigenvalue); `ridge=0` gives exact (minimum-norm) least squares.
    """
    lam = ridge_penalty(stats, ridge)
    gram, cross = stats.xx(centered=bias), stats.xy(centered=bias)
    evals, evecs = torch.linalg.eigh(gram)
    if evals[-1] <= 0:
        what = "no variance (all rows equal, e.g. all zeros)" if bias else "all zeros"
        raise ValueError(f"x has {what} over n={stats.n} rows; there is nothing to fit a map from")
    keep = evals > evals[-1] * gram.shape[0] * _EPS64
    if lam == 0 and not keep.all():
        warnings.warn(
            f"x is rank-deficient (rank {int(keep.sum())} < d_source={gram.shape[0]}, n={stats.n});"
            " returning the minimum-norm least-squares solution; pass ridge > 0 to regularise",
            UserWarning,
            stacklevel=3,
        )
    shifted = evals.clamp(min=0) + lam
    inverse = 1.0 / shifted if lam > 0 else torch.where(keep, 1.0 / shifted, torch.zeros_like(shifted))
    W = evecs @ (inverse[:, None] * (evecs.T @ cross))
    b = stats.mean_y - stats.mean_x @ W if bias else None
    return W, b


def solve_procrustes(
    stats: SufficientStats, scale: bool = False, translation: bool = False
) -> tuple[Float[Tensor, "d_source d_target"], Tensor, Float[Tensor, " d_target"] | None]:
    """Orthogonal Procrustes `y ≈ s · x @ W (+ b)` with W (semi-)orthogonal, in float64 via one SVD.

    When widths differ W is [d_source, d_target] with orthonormal rows (d_source < d_target, an isometric
    embedding) or orthonormal columns (d_source > d_target, an orthogonal projection). W maximises
    tr(Wᵀ XᵀY); that is also the least-squares optimum whenever ‖XW‖ does not depend on W — always for
    d_source <= d_target, and for a projection only when x is isotropic (the "unbalanced" least-squares
    problem has no closed form; use Affine or a trained Projection for it).
    """
    cross = stats.xy(centered=translation)
    top = cross.abs().max()
    if top == 0:
        raise ValueError(
            f"the cross-covariance of x and y is zero over n={stats.n} rows (x or y carries no "
            "signal, e.g. all zeros); the rotation is undefined"
        )
    U, S, Vh = torch.linalg.svd(cross / top, full_matrices=False)  # scaled: W is invariant to it
    rank = int((S > S[0] * max(cross.shape) * _EPS64).sum())
    if rank < S.numel():
        warnings.warn(
            f"the cross-covariance of x and y has rank {rank} < min(d_source, d_target)="
            f"{S.numel()}; the map is not unique there and one valid solution is returned",
            UserWarning,
            stacklevel=3,
        )
    W = U @ Vh
    s = _procrustes_scale(stats, W, S * top, translation) if scale else torch.ones((), dtype=W.dtype)
    b = stats.mean_y - s * (stats.mean_x @ W) if translation else None
    return W, s, b


def _procrustes_scale(stats: SufficientStats, W: Tensor, S: Tensor, centered: bool) -> Tensor:
    # least-squares isotropic scale given W: tr(WᵀXᵀY) / ‖XW‖²  (‖XW‖ ≠ ‖X‖ when W projects)
    energy = (W * (stats.xx(centered) @ W)).sum()
    if energy <= 0:
        raise ValueError(f"x has no variance along the fitted map over n={stats.n} rows; scale is undefined")
    return S.sum() / energy
