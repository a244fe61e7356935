"""analyses.similarity: SVCCA, cosine, alignment/uniformity against numpy references; permutation nulls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analyses.cka import cka_from_sides, linear_cka, prepare
from analyses.similarity import (
    MEASURES,
    alignment,
    cca_correlations,
    mean_cosine,
    permutation_null,
    permutation_null_matrix,
    similarity_matrix,
    svcca,
    uniformity,
    uniformity_of,
)


def data(n=120, dx=10, dy=14, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.2, 3, size=dx) + rng.normal(size=dx)
    y = np.tanh(x @ rng.normal(size=(dx, dy))) + noise * rng.normal(size=(n, dy))
    return x, y


# ---- numpy references (different algorithms from the implementation) ------------------------------------


def ref_svcca(x, y, keep):
    """PCA by eigendecomposition of the covariance, then CCA by whitening: Cxx^-1/2 Cxy Cyy^-1/2."""

    def reduce(a):
        a = a - a.mean(0)
        vals, vecs = np.linalg.eigh(a.T @ a)
        vals, vecs = vals[::-1], vecs[:, ::-1]
        k = int(np.searchsorted(np.cumsum(vals) / vals.sum(), keep - 1e-12) + 1)
        return a @ vecs[:, :k]

    def inv_sqrt(c):
        vals, vecs = np.linalg.eigh(c)
        return vecs @ np.diag(vals**-0.5) @ vecs.T

    a, b = reduce(x), reduce(y)
    m = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
    return np.linalg.svd(m, compute_uv=False)


def ref_notebook_cca(x, y):
    """Kornblith et al.'s demo `cca` (mean squared CCA correlation by QR), on centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(x)[0], np.linalg.qr(y)[0]
    return np.linalg.norm(qx.T @ qy) ** 2 / min(x.shape[1], y.shape[1])


def ref_cosine(x, y):
    return np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(x, y, strict=True)])


def ref_alignment(x, y, alpha):
    x, y = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, y))
    return np.mean(np.linalg.norm(x - y, axis=1) ** alpha)


def ref_uniformity(x, t):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    terms = [np.exp(-t * np.sum((x[a] - x[b]) ** 2)) for a in range(n) for b in range(a + 1, n)]
    return np.log(np.mean(terms))


# ---- measures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_svcca_matches_whitening_reference(keep, seed):
    x, y = data(seed=seed)
    expected = ref_svcca(x, y, keep)
    got = cca_correlations(x, y, keep).numpy()
    assert got.shape == expected.shape
    assert np.allclose(got, expected, atol=1e-8)
    assert svcca(x, y, keep) == pytest.approx(expected.mean(), abs=1e-8)


def test_cca_matches_the_notebooks_r2_cca():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    r2 = cca_correlations(x, y, keep=1.0).square().mean().item()
    assert r2 == pytest.approx(ref_notebook_cca(x, y), abs=1e-10)
    assert r2 == pytest.approx(0.54312, abs=0.01)  # the notebook's printout, which did not centre


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100))
def test_svcca_invariances(seed, scale):
    x, y = (torch.from_numpy(a) for a in data(n=80, dx=6, dy=7, seed=seed % 1000))
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    invertible = torch.randn(6, 6, generator=g, dtype=torch.float64) + 3 * torch.eye(6, dtype=torch.float64)
    assert svcca(scale * x @ q, y) == pytest.approx(svcca(x, y), abs=1e-9)  # any keep: rotations, scale
    assert svcca(x @ invertible, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-9)  # plain CCA
    assert svcca(x, x @ invertible, keep=1.0) == pytest.approx(1.0, abs=1e-9)


def test_cosine_alignment_uniformity_match_references():
    x, y = data(n=60, dx=8, dy=8)
    assert mean_cosine(x, y) == pytest.approx(ref_cosine(x, y), abs=1e-12)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert mean_cosine(x, y, center=True) == pytest.approx(ref_cosine(xc, yc), abs=1e-12)
    for alpha in (1.0, 2.0, 3.5):
        assert alignment(x, y, alpha) == pytest.approx(ref_alignment(x, y, alpha), abs=1e-12)
    for t in (0.5, 2.0):
        assert uniformity_of(x, t) == pytest.approx(ref_uniformity(x, t), abs=1e-10)
        assert uniformity(x, y, t) == pytest.approx(
            (ref_uniformity(x, t) + ref_uniformity(y, t)) / 2, abs=1e-10
        )


def test_measure_extremes():
    x, _ = data(n=50, dx=5, dy=5)
    assert mean_cosine(x, 3 * x) == pytest.approx(1.0)
    assert mean_cosine(x, -x) == pytest.approx(-1.0)
    assert alignment(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0)
    crowded = np.ones((50, 5)) + 1e-9 * np.random.default_rng(0).normal(size=(50, 5))
    assert uniformity_of(crowded) == pytest.approx(0.0, abs=1e-6)  # all on one point: log 1
    assert uniformity_of(x) < -0.5


def test_measure_errors_name_the_argument():
    x, y = data(n=30, dx=4, dy=6)
    with pytest.raises(ValueError, match=r"^y: width 6 differs from x's 4"):
        mean_cosine(x, y)
    with pytest.raises(ValueError, match=r"^y: width 6"):
        alignment(x, y)
    zero_row = x.copy()
    zero_row[7] = 0
    with pytest.raises(ValueError, match=r"^x: row 7 is all zeros"):
        mean_cosine(zero_row, x)
    with pytest.raises(ValueError, match=r"^keep: 0"):
        svcca(x, y, keep=0)
    with pytest.raises(ValueError, match=r"^keep: 1.5"):
        svcca(x, y, keep=1.5)
    with pytest.raises(ValueError, match=r"^x, y: n=30 samples for 20 \+ 20 kept directions"):
        svcca(
            np.random.default_rng(0).normal(size=(30, 20)),
            np.random.default_rng(1).normal(size=(30, 20)),
            1.0,
        )
    with pytest.raises(ValueError, match=r"^y: constant representation"):
        svcca(x, np.ones((30, 3)))
    with pytest.raises(ValueError, match=r"^y: 29 samples, but x has 30"):
        uniformity(x, y[:29])
    with_nan = x.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x: 1 non-finite"):
        alignment(with_nan, x)
    with pytest.raises(ValueError, match=r"^t: -1"):
        uniformity(x, y, t=-1)


# ---- matrices and permutation nulls --------------------------------------------------------------------


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_similarity_matrix_equals_per_pair(measure):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(40, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    ys = [
        xs[0] @ torch.randn(6, 6, generator=g, dtype=torch.float64) + torch.randn(40, 6, generator=g)
        for _ in range(3)
    ]
    m = similarity_matrix(xs, ys, measure)
    assert m.shape == (2, 3)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j].item() == pytest.approx(MEASURES[measure](x, y), abs=1e-10)


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rbf_cka"])
def test_fast_cka_null_equals_the_generic_null_with_the_same_permutations(measure):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(30, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    ys = [xs[1] + torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 40, generator=g)]
    fast = permutation_null_matrix(xs, ys, measure, n_permutations=25, seed=3)
    generic = permutation_null_matrix(xs, ys, lambda x, y: MEASURES[measure](x, y), n_permutations=25, seed=3)
    for field in ("observed", "null_mean", "null_std", "z", "p_value", "calibrated"):
        assert torch.allclose(getattr(fast, field), getattr(generic, field), atol=1e-10), field


@pytest.mark.parametrize("debiased", [False, True])
def test_permuted_gram_and_feature_paths_agree(debiased):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(25, d, generator=g) for d in (3, 30)]
    ys = [torch.randn(25, d, generator=g) for d in (4, 50)]
    sx, sy = prepare(xs, ys, debiased=debiased)
    perm = torch.randperm(25, generator=g)
    via_gram = cka_from_sides(sx, sy, method="gram", perm=perm)
    via_feature = cka_from_sides(sx, sy, method="feature", perm=perm)
    assert torch.allclose(via_gram, via_feature, atol=1e-10)
    direct = torch.tensor([[linear_cka(x, y[perm], debiased) for y in ys] for x in xs], dtype=torch.float64)
    assert torch.allclose(via_gram, direct, atol=1e-10)


def test_null_separates_signal_from_chance():
    x, y = data(n=100, dx=5, dy=5, noise=0.5)
    unrelated = np.random.default_rng(9).normal(size=(100, 5))
    signal = permutation_null(x, y, "linear_cka", n_permutations=99, seed=0)
    chance = permutation_null(x, unrelated, "linear_cka", n_permutations=99, seed=0)
    assert signal.p_value == pytest.approx(0.01) and signal.z > 5 and signal.calibrated > 0.3
    assert chance.p_value > 0.05 and abs(chance.calibrated) < 0.1
    assert chance.observed > 0.02  # biased CKA of unrelated data is well above 0: why a null is needed
    assert signal.to_dict()["n_permutations"] == 99


def test_null_p_values_are_calibrated_under_independence():
    rng = np.random.default_rng(0)
    ps = [
        permutation_null(
            rng.normal(size=(20, 3)), rng.normal(size=(20, 4)), n_permutations=19, seed=s
        ).p_value
        for s in range(100)
    ]
    assert 0.02 <= np.mean(np.array(ps) <= 0.1) <= 0.2  # ~10% of independent pairs at alpha = 0.1
    assert all(p in {k / 20 for k in range(1, 21)} for p in np.round(ps, 12))


def test_null_direction_and_pairing_blind_measures():
    x, _ = data(n=40, dx=4, dy=4)
    aligned = permutation_null(x, x + 0.01, "alignment", n_permutations=19)
    assert aligned.z > 3 and aligned.p_value == pytest.approx(0.05)  # lower alignment = more similar
    blind = permutation_null(x, x, "uniformity", n_permutations=9)
    assert blind.z == 0 and blind.p_value == 1.0 and not math.isnan(blind.calibrated)


def test_null_errors():
    x, y = data(n=20, dx=3, dy=3)
    with pytest.raises(ValueError, match=r"^n_permutations: 0"):
        permutation_null(x, y, n_permutations=0)
    with pytest.raises(ValueError, match=r"^measure: 'cca' is not one of"):
        permutation_null(x, y, "cca")
    with pytest.raises(ValueError, match=r"^y: constant representation"):
        permutation_null(x, np.ones((20, 2)))
