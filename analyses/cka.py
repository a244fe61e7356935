"""Centred kernel alignment (Kornblith et al. 2019): exact, float64, and fast over all layer pairs.

    >>> from analyses.cka import linear_cka, rbf_cka, cka_matrix, MinibatchCKA
    >>> linear_cka(x, y)                       # x [n, d_source], y [n, d_target] -> float in [0, 1]
    >>> linear_cka(x, y, debiased=True)        # unbiased HSIC (Song et al. 2012); needs n >= 4
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

__all__ = ["GRAM_BYTES_LIMIT", "MinibatchCKA", "cka_matrix", "linear_cka", "rbf_cka"]

KERNELS = ("linear", "rbf")
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
    if kernel not in KERNELS:
        raise ValueError(f"kernel: {kernel!r} is not one of {list(KERNELS)}")
    if kernel == "rbf" and not (isinstance(sigma_frac, int | float) and 0 < sigma_frac < float("inf")):
        raise ValueError(
            f"sigma_frac: {sigma_frac!r}; expected a finite number > 0 (fraction of the median distance)"
        )
    min_n = 4 if debiased else 2
    opts = dict(min_n=min_n, allow_constant=allow_constant)
    mats_x = as_layers(xs, names[0], **opts)
    mats_y = mats_x if ys is xs else as_layers(ys, names[1], **opts)
    check_pairing(mats_x, mats_y, names)
    side_x = Side(mats_x, names[0], kernel=kernel, debiased=debiased, sigma_frac=sigma_frac)
    same = ys is xs or (len(xs) == len(ys) and all(a is b for a, b in zip(xs, ys, strict=True)))
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
    return cross / torch.sqrt(self_x[:, None] * self_y[None, :])


def _debias(prod: Tensor, dx: Tensor, dy: Tensor, n: int) -> Tensor:
    """n(n-3) x the unbiased HSIC (Song et al. 2012) from products of centred-feature Grams.

    `prod[i, j]` = <K_i, L_j>, `dx[i]`/`dy[j]` their diagonals. Kornblith et al.'s feature-space
    rearrangement of the U-statistic; translation-invariant, so centring first costs nothing.
    """
    trace_x, trace_y = dx.sum(1), dy.sum(1)
    return prod - n / (n - 2) * (dx @ dy.T) + trace_x[:, None] * trace_y[None, :] / ((n - 1) * (n - 2))


def _check_positive(self_hsic: Tensor, names: list[str], debiased: bool) -> None:
    # A zero (or, debiased, negative) self-similarity makes CKA 0/0: say which layer, never return NaN.
    for i in torch.nonzero(self_hsic <= 0).flatten().tolist():
        why = (
            "too few samples for the debiased estimator, or a near-constant representation"
            if debiased
            else "a (numerically) constant representation"
        )
        raise ValueError(
            f"{names[i]}: HSIC with itself is {self_hsic[i].item():.3g} <= 0, so CKA is undefined ({why})"
        )


# ---- inputs -------------------------------------------------------------------------------------------

GRAM_BYTES_LIMIT = 4 * 2**30  # above this, linear CKA uses the feature-space form (memory ~ d^2, not n^2)


def as_samples(x, name: str, *, min_n: int = 2, allow_constant: bool = False) -> Float[Tensor, "n d"]:
    """`x` as a finite float64 [n, d] tensor with n >= `min_n`, else a ValueError naming `name`."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name}: expected a tensor or array [n, d], got {type(x).__name__}") from err
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(
            f"{name}: expected a 2-D [n, d] tensor (samples x features, d >= 1), got shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_n:
        raise ValueError(
            f"{name}: {x.shape[0]} samples; need n >= {min_n}"
            + (" for the debiased (unbiased HSIC) estimator" if min_n == 4 else "")
        )
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x.sum(0)).all()):  # cheap screen: any NaN/inf makes its column sum non-finite
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name}: {n_bad} non-finite values (NaN or inf), or sums overflowing float64; "
            "similarity needs finite inputs"
        )
    if not allow_constant and torch.equal(x, x[:1].expand_as(x)):  # stops at the first differing value
        raise ValueError(
            f"{name}: constant representation (all {x.shape[0]} samples identical); similarity is undefined"
        )
    return x


def as_layers(xs, name: str, **checks) -> list[Tensor]:
    """A list of [n, d] tensors (one per layer) from a list/tuple or a stacked [layer, n, d] tensor."""
    if isinstance(xs, Tensor) and xs.ndim == 3:
        xs = list(xs.unbind(0))
    if not isinstance(xs, list | tuple) or len(xs) == 0:
        raise TypeError(
            f"{name}: expected a non-empty list of [n, d] tensors (one per layer), got {type(xs).__name__}"
        )
    return [as_samples(x, _label(name, i), **checks) for i, x in enumerate(xs)]


def _label(name: str, i: int) -> str:
    # linear_cka(x, y) reports "x"/"y"; layer lists report "xs[3]".
    return name if name in ("x", "y") else f"{name}[{i}]"


def check_pairing(mats_x: list[Tensor], mats_y: list[Tensor], names: tuple[str, str]) -> None:
    """Rows pair up: every layer of both sides has the same number of samples n."""
    n = mats_x[0].shape[0]
    for name, mats in zip(names, (mats_x, mats_y), strict=True):
        for i, m in enumerate(mats):
            if m.shape[0] != n:
                raise ValueError(
                    f"{_label(name, i)}: {m.shape[0]} samples, but {names[0]} has {n}; rows must pair the "
                    "same samples (mismatched n)"
                )


# ---- per-layer statistics, computed once ---------------------------------------------------------------


class Side:
    """One model's layers, prepared once: centred float64 features, Gram diagonals, Grams when needed.

    Grams are stored packed: only their lower triangle, in row panels (`_PANEL` rows, columns up to the
    diagonal), so half of each Gram is neither multiplied, stored nor read. `gram_products` recovers
    full Frobenius products from packed triangles: <K, L> = 2 <tri K, tri L> - <diag K, diag L>.
    """

    def __init__(self, mats: list[Tensor], name: str, *, kernel: str, debiased: bool, sigma_frac: float):
        self.names = [_label(name, i) for i in range(len(mats))]
        self.kernel, self.debiased, self.n = kernel, debiased, mats[0].shape[0]
        self.feats = [m - m.mean(0, keepdim=True) for m in mats]  # centre first: offsets cancel exactly
        self._grams: Tensor | None = None
        self._full: Tensor | None = None
        if kernel == "linear":
            self.diag = torch.stack([_row_sq_norms(f) for f in self.feats])
            return
        grams = [
            _rbf_gram(f, sigma_frac, debiased, label) for f, label in zip(self.feats, self.names, strict=True)
        ]
        self.diag = torch.stack([g.diagonal() for g in grams])
        self._grams = torch.stack([_pack(g) for g in grams])

    def grams(self) -> Float[Tensor, "layer packed"]:
        """Packed lower triangles of the centred Grams, formed on first use."""
        if self._grams is None:
            self._grams = torch.empty(
                len(self.feats), _packed_size(self.n), dtype=torch.float64, device=self.feats[0].device
            )
            for f, out in zip(self.feats, self._grams, strict=True):
                _packed_gram_into(f, out)
        return self._grams

    def full_grams(self) -> Float[Tensor, "layer n n"]:
        """Symmetric Grams, kept once formed: permutation nulls re-index them for every permutation."""
        if self._full is None:
            self._full = torch.stack([_unpack(packed, self.n) for packed in self.grams()])
        return self._full

    def widths(self) -> list[int]:
        return [f.shape[1] for f in self.feats]


def _row_sq_norms(f: Tensor) -> Tensor:
    return torch.linalg.vector_norm(f, dim=1).square()


_PANEL = 256  # rows per panel: one matmul of [256, d] x [d, <= n] each, large enough to run at full speed


def _panels(n: int):
    """(start, end, offset) of each row panel of a packed n x n lower triangle."""
    offset = 0
    for start in range(0, n, _PANEL):
        end = min(start + _PANEL, n)
        yield start, end, offset
        offset += (end - start) * end


def _packed_size(n: int) -> int:
    return sum((end - start) * end for start, end, _ in _panels(n))


def _packed_gram_into(f: Float[Tensor, "n d"], out: Float[Tensor, " packed"]) -> None:
    """The lower triangle of f @ f.T, panel by panel: about half the multiply-adds of the full Gram."""
    for start, end, offset in _panels(f.shape[0]):
        panel = out[offset : offset + (end - start) * end].view(end - start, end)
        torch.mm(f[start:end], f[:end].T, out=panel)
        panel[:, start:].tril_()  # the diagonal tile: zero what lies above the diagonal


def _pack(full: Float[Tensor, "n n"]) -> Float[Tensor, " packed"]:
    return torch.cat(
        [full[start:end, :end].tril(start).flatten() for start, end, _ in _panels(full.shape[0])]
    )


def _unpack(packed: Float[Tensor, " packed"], n: int) -> Float[Tensor, "n n"]:
    lower = packed.new_zeros(n, n)
    for start, end, offset in _panels(n):
        lower[start:end, :end] = packed[offset : offset + (end - start) * end].view(end - start, end)
    return lower + lower.tril(-1).T


def _rbf_gram(f: Float[Tensor, "n d"], sigma_frac: float, unbiased: bool, name: str) -> Float[Tensor, "n n"]:
    sq = _row_sq_norms(f)
    d2 = (sq[:, None] + sq[None, :] - 2 * (f @ f.T)).clamp_min_(0)
    median = _median(d2)  # over all n^2 entries, diagonal included (as Kornblith et al.)
    if median <= 0:
        raise ValueError(
            f"{name}: median squared distance is 0 (most samples coincide); the RBF bandwidth "
            "sigma_frac x median distance is undefined"
        )
    return _center_gram(torch.exp_(d2.div_(-2 * sigma_frac**2 * median)), unbiased)


def _median(t: Tensor) -> float:
    """numpy's median (mean of the two middle values), without torch.quantile's 2^24-element limit."""
    flat = t.flatten()
    m = flat.numel()
    upper = flat.kthvalue(m // 2 + 1).values.item()
    return upper if m % 2 else (flat.kthvalue(m // 2).values.item() + upper) / 2


def _center_gram(k: Float[Tensor, "n n"], unbiased: bool) -> Float[Tensor, "n n"]:
    """H K H, or (unbiased) the U-centred Gram of Szekely & Rizzo (2014); modifies `k` in place."""
    n = k.shape[0]
    if unbiased:
        k.fill_diagonal_(0)
        means = k.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = k.mean(0)
        means -= means.mean() / 2
    k -= means[:, None]
    k -= means[None, :]
    return k.fill_diagonal_(0) if unbiased else k


# ---- Frobenius products <K_i, L_j> ---------------------------------------------------------------------


def gram_products(sx: Side, sy: Side, *, method: str = "auto", perm: Tensor | None = None):
    """<K_i, L_j> for all pairs and <K_i, K_i>, <L_j, L_j>, with L's samples re-paired by `perm`."""
    if method == "auto":
        method = "gram" if _grams_cheaper(sx, sy, perm is not None) else "feature"
    if method == "feature" and sx.kernel == "rbf":
        raise ValueError("method: 'feature' exists only for the linear kernel; use 'gram' or 'auto' for rbf")
    if method == "feature":
        ys = sy.feats if perm is None else [f[perm] for f in sy.feats]
        cross = torch.stack([torch.stack([(fx.T @ fy).square().sum() for fy in ys]) for fx in sx.feats])
        return cross, _self_feature(sx), _self_feature(sy)
    gx = sx.grams().flatten(1)
    dx, dy = sx.diag, sy.diag if perm is None else sy.diag[:, perm]
    # For a lower triangle T of K and any symmetric S: <K, S> = 2 <T, S> - <diag K, diag S>.
    if perm is None:
        cross = 2 * (gx @ sy.grams().flatten(1).T) - dx @ dy.T
    else:
        permuted = [_pack(full[perm[:, None], perm[None, :]]) for full in sy.full_grams()]
        cross = 2 * (gx @ torch.stack(permuted, 1)) - dx @ dy.T
    return cross, _self_gram(sx), _self_gram(sy)


def _self_gram(side: Side) -> Tensor:
    norms = torch.linalg.vector_norm(side.grams().flatten(1), dim=1)  # one pass, no n x n temporary
    return 2 * norms.square() - side.diag.square().sum(1)


def _self_feature(side: Side) -> Tensor:
    return torch.stack([(f.T @ f).square().sum() for f in side.feats])


def _grams_cheaper(sx: Side, sy: Side, permuted: bool) -> bool:
    """Cost model (multiply-adds) for the n x n Gram form versus the d x d feature form."""
    if sx.kernel == "rbf" or sx._grams is not None:
        return True
    n, wx, wy = sx.n, sx.widths(), sy.widths()
    sides = [wx] if sy is sx else [wx, wy]
    packed = 0.5 * n * (n + _PANEL)  # entries of one packed Gram (a full one more for permuted sides)
    stored = packed * sum(len(w) for w in sides) + (n * n * len(wy) if permuted else 0)
    if 8 * stored > GRAM_BYTES_LIMIT:
        return False
    gram = packed * (sum(sum(w) for w in sides) + len(wx) * len(wy))
    feature = n * sum(wx) * sum(wy) + n * sum(d * d for w in (wx, wy) for d in w)
    return gram < feature


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
        return self._xy / torch.sqrt(self._xx[:, None] * self._yy[None, :])
