"""Per-layer statistics for CKA, computed once: centred features, packed Gram triangles, products.

>>> sx = Side([x0, x1], "xs", kernel="linear", debiased=False, sigma_frac=1.0)   # or analyses.cka.prepare
>>> cross, self_x, self_y = gram_products(sx, sy)   # <K_i, L_j> for every layer pair, <K_i, K_i>, <L_j, L_j>
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.samples import label

GRAM_BYTES_LIMIT = 4 * 2**30  # above this, linear CKA uses the feature-space form (memory ~ d^2, not n^2)


class Side:
    """One model's layers, prepared once: centred float64 features, Gram diagonals, Grams when needed.

    Grams are stored packed: only their lower triangle, in row panels (`_PANEL` rows, columns up to the
    diagonal), so half of each Gram is neither multiplied, stored nor read. `gram_products` recovers
    full Frobenius products from packed triangles: <K, L> = 2 <tri K, tri L> - <diag K, diag L>.
    """

    def __init__(self, mats: list[Tensor], name: str, *, kernel: str, debiased: bool, sigma_frac: float):
        self.names = [label(name, i) for i in range(len(mats))]
        self.kernel, self.debiased, self.n = kernel, debiased, mats[0].shape[0]
        self.feats = [m - m.mean(0, keepdim=True) for m in mats]  # centre first: offsets cancel exactly
        self._grams: Tensor | None = None
        self._full: Tensor | None = None
        self._self: dict[str, Tensor] = {}  # <K_i, K_i> by method: permutations leave it unchanged
        if kernel == "linear":
            self.diag = torch.stack([_row_sq_norms(f) for f in self.feats])
            return
        grams = [
            _rbf_gram(f, sigma_frac, debiased, layer) for f, layer in zip(self.feats, self.names, strict=True)
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
        return cross, _self_products(sx, method), _self_products(sy, method)
    gx = sx.grams().flatten(1)
    dx, dy = sx.diag, sy.diag if perm is None else sy.diag[:, perm]
    # For a lower triangle T of K and any symmetric S: <K, S> = 2 <T, S> - <diag K, diag S>.
    if perm is None:
        cross = 2 * (gx @ sy.grams().flatten(1).T) - dx @ dy.T
    else:
        permuted = [_pack(full[perm[:, None], perm[None, :]]) for full in sy.full_grams()]
        cross = 2 * (gx @ torch.stack(permuted, 1)) - dx @ dy.T
    return cross, _self_products(sx, method), _self_products(sy, method)


def _self_products(side: Side, method: str) -> Tensor:
    """<K_i, K_i> for every layer, computed once per side: a permutation null asks for it every shuffle."""
    if method not in side._self:
        side._self[method] = _self_gram(side) if method == "gram" else _self_feature(side)
    return side._self[method]


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
