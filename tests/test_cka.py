"""analyses.cka against an independent numpy reference of Kornblith et al. (2019), plus properties.

The reference below re-expresses, formula for formula, the functions of the paper's demo notebook
(google-research/representation_similarity/Demo.ipynb): gram_linear, gram_rbf, center_gram (biased
and unbiased), cka, the debiased dot-product helper and feature_space_linear_cka. It is checked against
the numbers the notebook itself prints for its tutorial example before anything is compared with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analyses.cka import MinibatchCKA, cka_from_sides, cka_matrix, linear_cka, prepare, rbf_cka

# ---- reference (numpy, float64) -------------------------------------------------------------------------


def ref_gram_linear(x):
    return x @ x.T


def ref_gram_rbf(x, threshold=1.0):
    dots = x @ x.T
    sq = np.diag(dots)
    sq_dist = sq[:, None] + sq[None, :] - 2 * dots
    return np.exp(-sq_dist / (2 * threshold**2 * np.median(sq_dist)))


def ref_center_gram(gram, unbiased=False):
    assert np.allclose(gram, gram.T)
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:  # Szekely & Rizzo (2014) U-centring
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None] + means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
        gram -= means[:, None] + means[None, :]
    return gram


def ref_cka(gram_x, gram_y, debiased=False):
    gx, gy = ref_center_gram(gram_x, debiased), ref_center_gram(gram_y, debiased)
    return (gx.ravel() @ gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy))


def ref_debiased_dot(xty, rows_x, rows_y, sq_x, sq_y, n):
    return xty - n / (n - 2.0) * rows_x @ rows_y + sq_x * sq_y / ((n - 1) * (n - 2))


def ref_feature_space_linear_cka(x, y, debiased=False):
    x, y = x - x.mean(0, keepdims=True), y - y.mean(0, keepdims=True)
    sim = np.linalg.norm(x.T @ y) ** 2
    norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        rows_x, rows_y = (x * x).sum(1), (y * y).sum(1)
        sq_x, sq_y = rows_x.sum(), rows_y.sum()
        sim = ref_debiased_dot(sim, rows_x, rows_y, sq_x, sq_y, n)
        norm_x = np.sqrt(ref_debiased_dot(norm_x**2, rows_x, rows_x, sq_x, sq_x, n))
        norm_y = np.sqrt(ref_debiased_dot(norm_y**2, rows_y, rows_y, sq_y, sq_y, n))
    return sim / (norm_x * norm_y)


def tutorial_data():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def test_reference_reproduces_the_notebooks_printed_numbers():
    x, y = tutorial_data()
    assert round(ref_cka(ref_gram_linear(x), ref_gram_linear(y)), 5) == 0.55761
    assert round(ref_feature_space_linear_cka(x, y), 5) == 0.55761
    assert round(ref_cka(ref_gram_rbf(x, 0.5), ref_gram_rbf(y, 0.5)), 5) == 0.65483
    assert round(ref_cka(ref_gram_linear(x), ref_gram_linear(y), debiased=True), 5) == 0.51346
    assert round(ref_feature_space_linear_cka(x, y, debiased=True), 5) == 0.51346


# ---- agreement with the reference ----------------------------------------------------------------------


def random_pair(n, dx, dy, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.1, 3, size=dx) + offset
    y = np.tanh(x @ rng.normal(size=(dx, dy))) + rng.normal(size=(n, dy))
    return x, y


CASES = [
    tutorial_data(),
    random_pair(50, 80, 30, 1),
    random_pair(300, 7, 5, 2),
    random_pair(40, 3, 60, 3, 5.0),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("method", ["auto", "gram", "feature"])
def test_linear_and_debiased_match_reference(case, method):
    x, y = CASES[case]
    assert linear_cka(x, y, method=method) == pytest.approx(
        ref_cka(ref_gram_linear(x), ref_gram_linear(y)), abs=1e-5
    )
    expected = ref_cka(ref_gram_linear(x), ref_gram_linear(y), debiased=True)
    assert linear_cka(x, y, debiased=True, method=method) == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(ref_feature_space_linear_cka(x, y, debiased=True), abs=1e-8)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("sigma_frac", [0.5, 1.0, 2.0])
def test_rbf_matches_reference(case, sigma_frac):
    x, y = CASES[case]
    grams = ref_gram_rbf(x, sigma_frac), ref_gram_rbf(y, sigma_frac)
    assert rbf_cka(x, y, sigma_frac) == pytest.approx(ref_cka(*grams), abs=1e-5)
    assert rbf_cka(x, y, sigma_frac, debiased=True) == pytest.approx(ref_cka(*grams, debiased=True), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"debiased": True},
        {"kernel": "rbf", "sigma_frac": 0.8},
        {"method": "gram"},
        {"method": "feature", "debiased": True},
    ],
)
def test_cka_matrix_equals_per_pair(kwargs):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(60, d, generator=g) for d in (5, 40, 70)]
    ys = [xs[1] @ torch.randn(40, d, generator=g) + torch.randn(60, d, generator=g) for d in (3, 90)]
    m = cka_matrix(xs, ys, **kwargs)
    assert m.shape == (3, 2) and m.dtype == torch.float64
    kernel, sigma = kwargs.get("kernel", "linear"), kwargs.get("sigma_frac", 1.0)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            gx, gy = (
                ref_gram_rbf(a.double().numpy(), sigma)
                if kernel == "rbf"
                else ref_gram_linear(a.double().numpy())
                for a in (x, y)
            )
            assert m[i, j].item() == pytest.approx(ref_cka(gx, gy, kwargs.get("debiased", False)), abs=1e-6)
    self_sim = cka_matrix(xs, xs, **kwargs)  # shared side
    assert torch.allclose(self_sim.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(self_sim, self_sim.T, atol=1e-12)


def test_packed_multi_panel_grams_match_reference():
    # n > 256 spans several packed row panels (the last one partial); tiny tests only ever use one.
    x, y = random_pair(700, 12, 9, 5, offset=3.0)
    assert linear_cka(x, y, method="gram") == pytest.approx(
        ref_cka(ref_gram_linear(x), ref_gram_linear(y)), abs=1e-9
    )
    expected = ref_cka(ref_gram_linear(x), ref_gram_linear(y), debiased=True)
    assert linear_cka(x, y, debiased=True, method="gram") == pytest.approx(expected, abs=1e-9)
    expected = ref_cka(ref_gram_rbf(x, 0.7), ref_gram_rbf(y, 0.7), debiased=True)
    assert rbf_cka(x, y, 0.7, debiased=True) == pytest.approx(expected, abs=1e-9)
    perm = torch.randperm(700, generator=torch.Generator().manual_seed(0))
    sx, sy = prepare([x], [y])
    expected = ref_cka(ref_gram_linear(x), ref_gram_linear(y[perm.numpy()]))
    assert cka_from_sides(sx, sy, method="gram", perm=perm).item() == pytest.approx(expected, abs=1e-9)


def test_gram_and_feature_forms_agree_with_stacked_layers_input():
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(4, 30, 12, generator=g), torch.randn(2, 30, 50, generator=g)
    assert torch.allclose(cka_matrix(xs, ys, method="gram"), cka_matrix(xs, ys, method="feature"), atol=1e-10)


# ---- properties ----------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(8, 60), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))


def _pair(shape):
    n, dx, dy, seed = shape
    x, y = random_pair(n, dx, dy, seed)
    return torch.from_numpy(x), torch.from_numpy(y)


@settings(max_examples=30, deadline=None)
@given(shapes, st.floats(1e-3, 1e3), st.booleans())
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(shape, scale, debiased):
    x, y = _pair(shape)
    if debiased and x.shape[0] < 4:
        return
    q = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], dtype=torch.float64))[0]
    base = linear_cka(x, y, debiased)
    assert linear_cka(scale * x @ q, y, debiased) == pytest.approx(base, abs=1e-9)
    assert rbf_cka(scale * x @ q, y) == pytest.approx(rbf_cka(x, y), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_self_similarity_is_one_and_biased_range_is_unit_interval(shape):
    x, y = _pair(shape)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(y, y) == pytest.approx(1.0, abs=1e-12)
    for value in (linear_cka(x, y), rbf_cka(x, y, 0.5)):
        assert -1e-12 <= value <= 1 + 1e-12


@settings(max_examples=20, deadline=None)
@given(shapes)
def test_float32_with_massive_offset_matches_float64(shape):
    # On a 1/128 grid, x + 1e4 is exact in float32: any difference is the implementation's, not storage's.
    x, y = ((t * 128).round() / 128 for t in _pair(shape))
    x32, y32 = (x + 1e4).float(), (y - 1e4).float()  # massive-activation offset, stored in float32
    assert torch.equal(x32.double() - 1e4, x)
    assert linear_cka(x32, y32) == pytest.approx(linear_cka(x, y), abs=1e-4)
    assert linear_cka(x32, y32, debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-4)
    assert rbf_cka(x32, y32) == pytest.approx(rbf_cka(x, y), abs=1e-4)


def test_the_offset_test_has_teeth_naive_float32_grams_fail_it():
    x, y = (t.float() for t in _pair((200, 30, 30, 0)))
    truth = linear_cka(x, y)
    gx, gy = ((a + 1e4) @ (a + 1e4).T for a in (x, y))  # float32 Grams of raw streams, centred afterwards
    h = torch.eye(200) - 1 / 200
    cx, cy = h @ gx @ h, h @ gy @ h
    naive = ((cx * cy).sum() / (cx.norm() * cy.norm())).item()
    assert abs(naive - truth) > 1e-2


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.3, 1.0, 3.0]), st.sampled_from([128, 256, 500]))
def test_minibatch_within_001_of_full_batch(seed, noise, batch):
    g = torch.Generator().manual_seed(seed)
    n = 3000
    xs = [torch.randn(n, 16, generator=g, dtype=torch.float64)]
    xs.append(xs[0] @ torch.randn(16, 32, generator=g, dtype=torch.float64))
    ys = [
        torch.tanh(xs[0] @ torch.randn(16, 24, generator=g, dtype=torch.float64))
        + noise * torch.randn(n, 24, generator=g, dtype=torch.float64)
    ]
    mb = MinibatchCKA()
    for i in range(0, n, batch):
        mb.update([x[i : i + batch] for x in xs], [y[i : i + batch] for y in ys])
    assert mb.n_samples == n
    # Against full-batch CKA from the same (unbiased-HSIC) estimator: the biased estimator's own upward
    # bias at low signal (~0.01 here) is not the minibatch's error.
    assert torch.allclose(mb.compute(), cka_matrix(xs, ys, debiased=True), atol=0.01)


def test_minibatch_with_a_single_batch_equals_debiased_cka():
    x, y = _pair((50, 6, 9, 4))
    mb = MinibatchCKA()
    mb.update([x], [y])
    assert mb.compute().item() == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-12)


# ---- degenerate input ----------------------------------------------------------------------------------


def test_debiased_needs_four_samples():
    x, y = _pair((3, 4, 4, 0))
    with pytest.raises(ValueError, match=r"^x: 3 samples; need n >= 4"):
        linear_cka(x, y, debiased=True)
    linear_cka(x, y)  # the biased estimator is defined for n = 3
    with pytest.raises(ValueError, match=r"xs\[0\]: 3 samples"):
        MinibatchCKA().update([x], [y])


@pytest.mark.parametrize("fn", [linear_cka, rbf_cka])
def test_two_samples_are_an_error_not_a_trivial_one(fn):
    x, y = _pair((2, 4, 5, 0))  # any two samples: centred, each side is one line, so CKA would be 1
    with pytest.raises(ValueError, match=r"^x: 2 samples; need n >= 3 \(CKA of 2 samples is trivially 1"):
        fn(x, y)
    with pytest.raises(ValueError, match=r"^xs\[0\]: 2 samples; need n >= 3"):
        cka_matrix([x], [y])
    x3, y3 = _pair((3, 4, 5, 0))
    assert fn(x3, y3) < 1 - 1e-6  # n = 3 is already informative


@pytest.mark.parametrize("fn", [linear_cka, rbf_cka, lambda x, y: linear_cka(x, y, True)])
def test_constant_nonfinite_mismatched_and_wrong_ndim_inputs_raise(fn):
    x, y = _pair((20, 5, 6, 0))
    with pytest.raises(ValueError, match=r"^y: constant representation"):
        fn(x, torch.full((20, 6), 3.0))
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[3, 2] = bad
        with pytest.raises(ValueError, match=r"^x: 1 non-finite"):
            fn(x_bad, y)
    with pytest.raises(ValueError, match=r"^y: 19 samples, but x has 20.*mismatched n"):
        fn(x, y[:19])
    with pytest.raises(ValueError, match=r"^x: expected a 2-D"):
        fn(x[None], y)
    with pytest.raises(ValueError, match=r"^y: expected a 2-D"):
        fn(x, y[:, 0])


def test_matrix_errors_name_the_layer():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(10, 4, generator=g) for _ in range(3)]
    with pytest.raises(ValueError, match=r"^ys\[1\]: 9 samples, but xs\[0\] has 10"):
        cka_matrix(xs, [xs[0], torch.randn(9, 4)])
    with pytest.raises(ValueError, match=r"^xs\[2\]: constant"):
        cka_matrix([xs[0], xs[1], torch.ones(10, 4)], xs)
    with pytest.raises(ValueError, match=r"^kernel: 'cosine' is not one of"):
        cka_matrix(xs, xs, kernel="cosine")
    with pytest.raises(ValueError, match=r"^sigma_frac: -1"):
        cka_matrix(xs, xs, kernel="rbf", sigma_frac=-1)
    with pytest.raises(ValueError, match=r"^method: 'svd'"):
        cka_matrix(xs, xs, method="svd")
    with pytest.raises(TypeError, match=r"^xs: expected a non-empty list"):
        cka_matrix([], xs)


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 6), st.integers(1, 3), st.integers(0, 2**31 - 1), st.booleans())
def test_tiny_tied_inputs_give_a_number_or_a_named_error_never_nan(n, d, seed, debiased):
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 2, (n, d), generator=g).double() for _ in range(2))  # many ties, near-degenerate
    for fn in (linear_cka, rbf_cka):
        try:
            value = fn(x, y, debiased=debiased) if fn is linear_cka else fn(x, y, debiased=debiased)
        except ValueError as err:
            assert str(err).startswith(("x:", "y:"))
        else:
            assert np.isfinite(value)


def test_zero_self_hsic_is_an_error_not_nan():
    mb = MinibatchCKA()  # minibatches may be constant; only the total must carry signal
    mb.update([torch.ones(8, 3)], [torch.randn(8, 2)])
    with pytest.raises(ValueError, match=r"^xs\[0\]: HSIC with itself is 0 <= 0"):
        mb.compute()
    with pytest.raises(ValueError, match=r"no batches yet"):
        MinibatchCKA().compute()
    with pytest.raises(ValueError, match=r"^x: median squared distance is 0"):
        rbf_cka(torch.tensor([[0.0]] * 9 + [[1.0]]), torch.randn(10, 2))


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_float64_overflow_is_an_error_not_nan_or_zero(method):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(20, 5, generator=g, dtype=torch.float64) for _ in range(2))
    with pytest.raises(ValueError, match=r"^x: HSIC with itself overflows float64"):
        linear_cka(x * 1e100, y, method=method)


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_huge_but_finite_self_hsics_normalise_without_overflow(method):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(20, 5, generator=g, dtype=torch.float64) for _ in range(2))
    assert linear_cka(x * 1e60, y * 1e60, method=method) == pytest.approx(linear_cka(x, y), rel=1e-9)
    mb = MinibatchCKA()
    mb.update([x * 1e60], [y * 1e60])
    assert mb.compute().item() == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-9)
