"""More similarity measures with CKA's call shape, and permutation nulls that say what is above chance.

    >>> from analyses.similarity import svcca, mean_cosine, alignment, uniformity, permutation_null, \
    ...     permutation_null_matrix
    >>> svcca(x, y)                     # x [n, d_source], y [n, d_target] -> mean canonical correlation
    >>> mean_cosine(x, y)               # paired states in one space (d_source == d_target)
    >>> alignment(x, y), uniformity(x, y)           # Wang & Isola (2020); lower is better for both
    >>> null = permutation_null(x, y, "linear_cka", n_permutations=200)
    >>> null.observed, null.null_mean, null.p_value, null.calibrated
    >>> permutation_null_matrix(xs, ys).calibrated  # Tensor [layer_x, layer_y], every cell at once

Every measure takes (x [n, d_x], y [n, d_y]) whose rows pair the same n samples and returns a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.cka import MIN_SAMPLES, cka_from_sides, linear_cka, prepare, rbf_cka
from analyses.samples import as_layers, as_samples, check_pairing
from stitch.registry import Registry

Measure = Callable[[Tensor, Tensor], float]


def _pair(x, y, *, allow_constant: bool = True, same_width: str | None = None) -> tuple[Tensor, Tensor]:
    x = as_samples(x, "x", allow_constant=allow_constant)
    y = as_samples(y, "y", allow_constant=allow_constant)
    check_pairing([x], [y], ("x", "y"))
    if same_width and x.shape[1] != y.shape[1]:
        raise ValueError(
            f"y: width {y.shape[1]} differs from x's {x.shape[1]}; {same_width} compares states in "
            "one space (map x through an adapter first)"
        )
    return x, y


def _unit_rows(x: Tensor, name: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(
            f"{name}: row {int(torch.nonzero(norms.flatten() == 0)[0])} is all zeros; its direction "
            "(and so its cosine) is undefined"
        )
    return x / norms


# ---- measures ------------------------------------------------------------------------------------------


def cca_correlations(
    x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], keep: float = 0.99
) -> Float[Tensor, " k"]:
    """Canonical correlations after keeping the top singular directions of each side (descending).

    >>> cca_correlations(x, y, keep=1.0).square().mean()   # Kornblith et al.'s R^2_CCA
    """
    x, y = _pair(x, y, allow_constant=False)
    ux, uy = _top_directions(x, keep, "x"), _top_directions(y, keep, "y")
    if ux.shape[1] + uy.shape[1] > x.shape[0] - 1:
        raise ValueError(
            f"x, y: n={x.shape[0]} samples for {ux.shape[1]} + {uy.shape[1]} kept directions; CCA "
            "needs n - 1 >= their sum, or every correlation is trivially 1 (lower keep or add samples)"
        )
    # CCA is invariant to invertible maps, so on U S it equals the principal angles between the U's.
    return torch.linalg.svdvals(ux.T @ uy).clamp_(0, 1)


def _top_directions(x: Tensor, keep: float, name: str) -> Tensor:
    """Orthonormal left singular vectors of centred x explaining a `keep` fraction of its variance."""
    if isinstance(keep, bool) or not (
        isinstance(keep, int) and keep >= 1 or isinstance(keep, float) and 0 < keep <= 1
    ):
        raise ValueError(
            f"keep: {keep!r}; expected a variance fraction in (0, 1] or a count of directions >= 1"
        )
    u, s, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    s = s[s > s[0] * 1e-12]  # numerical rank
    if isinstance(keep, int):
        k = min(keep, len(s))
    else:
        cumulative = (s.square().cumsum(0) / s.square().sum()).tolist()
        k = next(i + 1 for i, c in enumerate(cumulative) if c >= keep - 1e-12)
    return u[:, :k]


def svcca(x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of the top-variance subspaces, in [0, 1].

    >>> svcca(x, y)              # keep directions explaining 99% of each side's variance
    >>> svcca(x, y, keep=20)     # or the top 20 directions
    """
    return cca_correlations(x, y, keep).mean().item()


def mean_cosine(
    x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], center: bool = False
) -> float:
    """Mean cosine similarity of paired states (same width), in [-1, 1].

    >>> mean_cosine(adapter(x_a), x_b)            # how well an adapter's outputs point like B's
    >>> mean_cosine(x, y, center=True)            # ignore the shared mean (massive activations)
    """
    x, y = _pair(x, y, same_width="mean_cosine")
    if center:
        x, y = x - x.mean(0), y - y.mean(0)
    return (_unit_rows(x, "x") * _unit_rows(y, "y")).sum(1).mean().item()


def alignment(x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: mean |x/|x| - y/|y||^alpha over pairs, in [0, 2^alpha]; lower = aligned.

    >>> alignment(adapter(x_a), x_b)
    """
    if not (isinstance(alpha, int | float) and alpha > 0):
        raise ValueError(f"alpha: {alpha!r}; expected a number > 0")
    x, y = _pair(x, y, same_width="alignment")
    return (_unit_rows(x, "x") - _unit_rows(y, "y")).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: Float[Tensor, "n d_source"], y: Float[Tensor, "n d_target"], t: float = 2.0) -> float:
    """Wang & Isola's uniformity, averaged over both sides as in their loss; lower = more uniform.

    >>> uniformity(x, y)        # (U(x) + U(y)) / 2, U(x) = log mean_{a<b} exp(-t |x_a - x_b|^2) on the sphere
    """
    if not (isinstance(t, int | float) and t > 0):
        raise ValueError(f"t: {t!r}; expected a number > 0")
    x, y = _pair(x, y)
    return (uniformity_of(x, t, "x") + uniformity_of(y, t, "y")) / 2


def uniformity_of(x: Float[Tensor, "n d"], t: float = 2.0, name: str = "x") -> float:
    """Uniformity of one representation (log-mean-exp over distinct pairs, computed stably)."""
    x = _unit_rows(as_samples(x, name, allow_constant=True), name)
    sq = torch.pdist(x).square()
    return (torch.logsumexp(-t * sq, 0) - math.log(sq.numel())).item()


MEASURES: Registry[Measure] = Registry("measure", {
    "linear_cka": linear_cka,
    "debiased_cka": partial(linear_cka, debiased=True),
    "rbf_cka": rbf_cka,
    "svcca": svcca,
    "mean_cosine": mean_cosine,
    "alignment": alignment,
    "uniformity": uniformity,
})
LOWER_IS_SIMILAR = frozenset({"alignment", "uniformity"})
_CKA = {"linear_cka": {}, "debiased_cka": {"debiased": True}, "rbf_cka": {"kernel": "rbf"}}


def min_samples(measure: str) -> int:
    """Fewest paired samples that give `measure` a meaning: 3 for linear/RBF CKA (at 2 it is always 1), 4
    for debiased CKA (undefined below), 2 for the rest (`svcca` checks its own, larger need)."""
    if measure not in _CKA:
        return 2
    options = _CKA[measure]
    return MIN_SAMPLES["debiased" if options.get("debiased") else options.get("kernel", "linear")]


def resolve_measure(measure: str | Measure) -> tuple[str, Measure]:
    if callable(measure):
        return getattr(measure, "__name__", "custom"), measure
    if measure not in MEASURES:
        raise ValueError(
            f"measure: {measure!r} is not one of {sorted(MEASURES)} (or pass a callable (x, y) -> float)"
        )
    return measure, MEASURES[measure]


def similarity_matrix(
    xs: Sequence[Tensor], ys: Sequence[Tensor], measure: str | Measure = "linear_cka"
) -> Float[Tensor, "layer_x layer_y"]:
    """`measure` for every layer pair; CKA measures go through `cka_matrix`'s shared statistics."""
    return _Matrix(xs, ys, measure).values()


class _Matrix:
    """Layer-pair values of one measure, preparing shared statistics once for repeated (permuted) calls."""

    def __init__(self, xs, ys, measure):
        self.name, self.fn = resolve_measure(measure)
        if self.name in _CKA:
            self.sides = prepare(xs, ys, **_CKA[self.name])
        else:
            self.xs, self.ys = (
                as_layers(xs, "xs", allow_constant=True),
                as_layers(ys, "ys", allow_constant=True),
            )
            check_pairing(self.xs, self.ys, ("xs", "ys"))

    def values(self, perm: Tensor | None = None) -> Tensor:
        if self.name in _CKA:
            return cka_from_sides(*self.sides, perm=perm)
        ys = self.ys if perm is None else [y[perm] for y in self.ys]
        return torch.tensor([[self.fn(x, y) for y in ys] for x in self.xs], dtype=torch.float64)

    @property
    def n(self) -> int:
        return self.sides[0].n if self.name in _CKA else self.xs[0].shape[0]


# ---- chance level --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NullResult:
    """A similarity and its permutation null (samples' pairing shuffled); floats, or tensors per cell.

    `z` = (observed - null_mean) / null_std; `p_value` = (1 + #null at least as similar) / (1 + permutations),
    one-sided; `calibrated` = (observed - null_mean) / (1 - null_mean): 0 at chance, 1 at identity (for
    similarities whose maximum is 1; NaN-free but meaningless for `alignment`/`uniformity`).
    """

    measure: str
    observed: Tensor | float
    null_mean: Tensor | float
    null_std: Tensor | float
    z: Tensor | float
    p_value: Tensor | float
    calibrated: Tensor | float
    n_permutations: int
    seed: int

    def above_chance(self, alpha: float = 0.05) -> Tensor | bool:
        """Cells whose one-sided permutation p-value is at most `alpha`."""
        return self.p_value <= alpha

    def to_dict(self) -> dict:
        return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in asdict(self).items()}


def permutation_null(
    x: Float[Tensor, "n d_source"],
    y: Float[Tensor, "n d_target"],
    measure: str | Measure = "linear_cka",
    n_permutations: int = 100,
    seed: int = 0,
) -> NullResult:
    """The measure of (x, y) against its values with y's rows shuffled, as floats.

    >>> null = permutation_null(x, y, "debiased_cka", n_permutations=500)
    >>> null.p_value < 0.01, null.calibrated
    """
    try:
        result = permutation_null_matrix([x], [y], measure, n_permutations, seed)
    except ValueError as err:  # report the single-pair names x / y, not xs[0] / ys[0]
        raise ValueError(str(err).replace("xs[0]", "x").replace("ys[0]", "y")) from None
    fields = {
        k: getattr(result, k) for k in ("observed", "null_mean", "null_std", "z", "p_value", "calibrated")
    }
    return NullResult(
        result.measure, **{k: v.item() for k, v in fields.items()}, n_permutations=n_permutations, seed=seed
    )


def permutation_null_matrix(
    xs: Sequence[Tensor],
    ys: Sequence[Tensor],
    measure: str | Measure = "linear_cka",
    n_permutations: int = 100,
    seed: int = 0,
) -> NullResult:
    """Per-cell null of a layer-pair matrix: one shuffle of the samples per permutation, for all cells.

    >>> null = permutation_null_matrix(layers_a, layers_b, n_permutations=200)
    >>> null.observed[null.above_chance()]
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations: {n_permutations!r}; expected an integer >= 1")
    matrix = _Matrix(xs, ys, measure)
    generator = torch.Generator().manual_seed(seed)
    observed = matrix.values()
    nulls = torch.stack(
        [matrix.values(torch.randperm(matrix.n, generator=generator)) for _ in range(n_permutations)]
    )
    return _summarise(matrix.name, observed, nulls, seed)


def _summarise(
    name: str, observed: Tensor, nulls: Float[Tensor, "perm layer_x layer_y"], seed: int
) -> NullResult:
    mean = nulls.mean(0)
    std = nulls.std(0) if len(nulls) > 1 else torch.zeros_like(observed)
    sign = -1.0 if name in LOWER_IS_SIMILAR else 1.0
    excess = sign * (observed - mean)
    # A measure blind to the pairing (uniformity) has a null equal to itself up to rounding: z = 0, not 1e16.
    tol = 1e-9 * (1 + mean.abs())
    flat = std <= tol
    z = torch.where(
        flat, torch.where(excess.abs() <= tol, 0.0, excess.sign() * math.inf), excess / std.where(~flat, 1.0)
    )
    hits = (sign * nulls >= sign * observed - tol).sum(0).double()
    room = 1 - mean
    calibrated = torch.where(room.abs() > 1e-12, (observed - mean) / room.where(room.abs() > 1e-12, 1.0), 0.0)
    return NullResult(
        name, observed, mean, std, z, (1 + hits) / (1 + len(nulls)), calibrated, len(nulls), seed
    )
