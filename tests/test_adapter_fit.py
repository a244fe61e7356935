"""Closed-form fits: planted transforms, independent references, streaming, degenerate inputs."""

import numpy as np
import pytest
import scipy.linalg
import torch

from stitch.adapters import Affine, Linear, Procrustes, SufficientStats, fit_closed_form, ridge_penalty

D64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def orthogonal(d_source, d_target, g):
    """A random [d_source, d_target] matrix with orthonormal rows or columns."""
    q, _ = torch.linalg.qr(
        torch.randn(max(d_source, d_target), min(d_source, d_target), generator=g, dtype=D64)
    )
    return q if d_source >= d_target else q.T


def planted(n, d_source, d_target, noise, seed=0, white=False):
    g = gen(seed)
    x = torch.randn(n, d_source, generator=g, dtype=D64)
    if white:  # exactly isotropic: XᵀX = n·I
        x = torch.linalg.qr(x)[0] * n**0.5
    Q = orthogonal(d_source, d_target, g)
    return x, Q, x @ Q + noise * torch.randn(n, d_target, generator=g, dtype=D64)


@pytest.mark.parametrize("ds,dt", [(16, 16), (8, 12), (12, 8)])
def test_procrustes_recovers_planted_map_within_noise_scaled_tolerance(ds, dt):
    # a projection (ds > dt) is recovered exactly only from isotropic x: see solve_procrustes
    errors = []
    for noise in [0.0, 1e-4, 1e-3, 1e-2]:
        x, Q, y = planted(2000, ds, dt, noise, white=ds > dt)
        err = (Procrustes.fit(x, y).matrix.detach() - Q).abs().max().item()
        assert err <= max(1e-10, 0.5 * noise), (noise, err)
        errors.append(err)
    assert errors[-1] > 10 * errors[1]  # the error does grow with the noise: the bound is not vacuous


def test_procrustes_matches_scipy_on_unrelated_data():
    g = gen(1)
    x, y = torch.randn(300, 10, generator=g, dtype=D64), torch.randn(300, 10, generator=g, dtype=D64)
    R, _ = scipy.linalg.orthogonal_procrustes(x.numpy(), y.numpy())
    np.testing.assert_allclose(Procrustes.fit(x, y).matrix.detach().numpy(), R, atol=1e-10)


def test_procrustes_recovers_scale_and_translation():
    x, Q, y = planted(1000, 10, 10, 0.0, seed=2)
    b = torch.linspace(-3, 5, 10, dtype=D64)
    ad = Procrustes.fit(x + 7.0, 2.5 * y + b, scale=True, translation=True)
    torch.testing.assert_close(ad.matrix.detach(), Q, atol=1e-10, rtol=0)
    assert abs(ad.scale.item() - 2.5) < 1e-10
    # y = 2.5 (x' - 7) Q + b, so the fitted bias is b - 17.5 · 1ᵀQ
    torch.testing.assert_close(ad.bias.detach(), b - 17.5 * Q.sum(0), atol=1e-9, rtol=0)


def test_affine_recovers_planted_map_and_matches_lstsq():
    g = gen(3)
    x = torch.randn(500, 7, generator=g, dtype=D64) * torch.linspace(0.1, 10, 7, dtype=D64) + 3
    A, b = torch.randn(7, 5, generator=g, dtype=D64), torch.randn(5, generator=g, dtype=D64)
    y = x @ A + b + 1e-3 * torch.randn(500, 5, generator=g, dtype=D64)
    ad = Affine.fit(x, y)
    assert (ad.matrix.detach() - A).abs().max() < 1e-2 and (ad.bias.detach() - b).abs().max() < 1e-2
    design = np.hstack([x.numpy(), np.ones((500, 1))])
    ref = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(ad.matrix.detach().numpy(), ref[:-1], atol=1e-10)
    np.testing.assert_allclose(ad.bias.detach().numpy(), ref[-1], atol=1e-10)


def test_ridge_matches_normal_equations_with_unpenalised_bias():
    g = gen(4)
    x, y = torch.randn(40, 6, generator=g, dtype=D64) + 2, torch.randn(40, 3, generator=g, dtype=D64)
    ridge, xn, yn = 0.3, x.numpy(), y.numpy()
    centred = xn - xn.mean(0)
    lam = (
        ridge * np.trace(centred.T @ centred) / 6
    )  # relative: a fraction of the centred Gram's mean eigenvalue
    ref = np.linalg.solve(xn.T @ xn + lam * np.eye(6), xn.T @ yn)
    np.testing.assert_allclose(Linear.fit(x, y, ridge=ridge).matrix.detach().numpy(), ref, atol=1e-10)
    design = np.hstack([xn, np.ones((40, 1))])
    penalty = lam * np.diag([1.0] * 6 + [0.0])
    ref = np.linalg.solve(design.T @ design + penalty, design.T @ yn)
    ad = Affine.fit(x, y, ridge=ridge)
    np.testing.assert_allclose(ad.matrix.detach().numpy(), ref[:-1], atol=1e-10)
    np.testing.assert_allclose(ad.bias.detach().numpy(), ref[-1], atol=1e-10)
    assert ridge_penalty(SufficientStats().update(x, y), ridge) == pytest.approx(lam, rel=1e-12)


def test_ridge_by_hand():
    # Affine, x = 0..3, y = 2x: centred Sxx = 5 = tr/d, so ridge=1 gives λ = 5 and W = Sxy/(Sxx+λ) = 10/10
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=D64)
    ad = Affine.fit(x, 2 * x, ridge=1.0)
    assert ad.matrix.item() == pytest.approx(1.0, abs=1e-12)
    assert ad.bias.item() == pytest.approx(3.0 - 1.5 * 1.0, abs=1e-12)  # mean_y - mean_x · W
    # Linear (no bias), x = [1, 3]: uncentred XᵀX = 10 is penalised by the centred trace 2 -> W = 20/12
    x = torch.tensor([[1.0], [3.0]], dtype=D64)
    assert Linear.fit(x, 2 * x, ridge=1.0).matrix.item() == pytest.approx(20 / 12, abs=1e-12)
    assert Linear.fit(x, 2 * x, ridge=0.0).matrix.item() == pytest.approx(2.0, abs=1e-12)


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("cls", [Linear, Affine])
def test_ridge_is_the_same_for_duplicated_pairs_and_rescaled_states(cls):
    g = gen(8)
    x = torch.randn(60, 12, generator=g, dtype=D64) * torch.logspace(-1, 1, 12, dtype=D64) + 3
    y = x @ torch.randn(12, 5, generator=g, dtype=D64) + torch.randn(60, 5, generator=g, dtype=D64)
    ridge = 0.1
    base = cls.fit(x, y, ridge=ridge)
    assert _relative_gap(base.matrix, cls.fit(x, y, ridge=0.0).matrix) > 1e-2  # ridge=0.1 does something
    dup = cls.fit(x.repeat(10, 1), y.repeat(10, 1), ridge=ridge)
    assert _relative_gap(dup.matrix, base.matrix) <= 1e-6
    scaled = cls.fit(1000 * x, 1000 * y, ridge=ridge)
    assert _relative_gap(scaled.matrix, base.matrix) <= 1e-6
    if cls is Affine:
        assert _relative_gap(dup.bias, base.bias) <= 1e-6
        assert _relative_gap(scaled.bias / 1000, base.bias) <= 1e-6


def test_ridge_zero_is_exact_least_squares():
    g = gen(9)
    x, y = torch.randn(50, 7, generator=g, dtype=D64) * 1e3, torch.randn(50, 4, generator=g, dtype=D64)
    ref = np.linalg.lstsq(np.hstack([x.numpy(), np.ones((50, 1))]), y.numpy(), rcond=None)[0]
    ad = Affine.fit(x, y, ridge=0.0)
    np.testing.assert_allclose(ad.matrix.detach().numpy(), ref[:-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ad.bias.detach().numpy(), ref[-1], rtol=1e-9, atol=1e-12)


def stream(x, y, sizes, seed=5):
    """Statistics built from uneven chunks, half of them merged in from a second accumulator."""
    cuts = torch.cumsum(torch.tensor([0, *sizes]), 0).tolist()
    a, b = SufficientStats(chunk_rows=37), SufficientStats()
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        (a if i % 2 else b).update(x[lo:hi], y[lo:hi])
    return a.merge(b)


@pytest.mark.parametrize(
    "kind,options",
    [
        ("procrustes", {}),
        ("procrustes", {"scale": True, "translation": True}),
        ("linear", {"ridge": 0.5}),
        ("affine", {}),
        ("affine", {"ridge": 2.0}),
    ],
)
def test_streaming_and_one_shot_fits_agree(kind, options):
    g = gen(6)
    x = torch.randn(1000, 9, generator=g, dtype=D64) * 3 + 50
    y = x[:, :7] @ torch.randn(7, 7, generator=g, dtype=D64) + torch.randn(1000, 7, generator=g, dtype=D64)
    sizes = [1, 2, 300, 97, 1, 400, 199]
    one = fit_closed_form(kind, SufficientStats().update(x, y), **options)
    streamed = fit_closed_form(kind, stream(x, y, sizes), **options)
    for (name, p), q in zip(one.named_parameters(), streamed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-8, rtol=0, msg=name)


def test_large_offsets_lose_no_precision():
    # residual streams carry huge constant directions; E[xxᵀ] − μμᵀ would lose ~12 digits here
    g = gen(7)
    x = torch.randn(2000, 5, generator=g, dtype=D64) + 1e6
    y = (x - 1e6) @ torch.randn(5, 4, generator=g, dtype=D64) + 0.1 * torch.randn(
        2000, 4, generator=g, dtype=D64
    )
    ref = np.linalg.lstsq((x - x.mean(0)).numpy(), (y - y.mean(0)).numpy(), rcond=None)[0]
    got = stream(x, y, [500, 700, 800]).cxx
    np.testing.assert_allclose(
        Affine.fit_stats(stream(x, y, [500, 700, 800])).matrix.detach().numpy(), ref, atol=1e-8
    )
    torch.testing.assert_close(got, (x - x.mean(0)).T @ (x - x.mean(0)), atol=1e-6, rtol=1e-12)


def test_fits_return_the_data_dtype_and_accept_numpy():
    x, _, y = planted(100, 4, 4, 0.1)
    assert Procrustes.fit(x.float(), y.float()).weight.dtype == torch.float32
    assert Affine.fit(x.numpy(), y.numpy()).weight.dtype == torch.float64


# ---------------------------------------------------------------- degenerate inputs


def test_zero_inputs_are_clear_errors():
    zeros, y = torch.zeros(50, 4, dtype=D64), torch.randn(50, 4, dtype=D64)
    with pytest.raises(ValueError, match="x has no variance"):
        Affine.fit(zeros, y)
    with pytest.raises(ValueError, match="x has all zeros"):
        Linear.fit(zeros, y)
    with pytest.raises(ValueError, match="cross-covariance of x and y is zero"):
        Procrustes.fit(zeros, y)
    with pytest.raises(ValueError, match="cross-covariance of x and y is zero"):
        Procrustes.fit(y, zeros)
    with pytest.raises(ValueError, match="x has no variance"):
        Affine.fit(torch.ones(1, 4), torch.ones(1, 4))


def test_zero_target_is_a_valid_affine_fit():
    ad = Affine.fit(torch.randn(50, 4, dtype=D64), torch.zeros(50, 3, dtype=D64))
    assert ad.matrix.abs().max() < 1e-12 and ad.bias.abs().max() < 1e-12


@pytest.mark.parametrize("shape", ["rank1", "n<d"])
def test_rank_deficient_least_squares_warns_and_returns_min_norm_solution(shape):
    g = gen(8)
    if shape == "rank1":
        x = torch.randn(60, 1, generator=g, dtype=D64) @ torch.randn(1, 6, generator=g, dtype=D64)
    else:
        x = torch.randn(4, 6, generator=g, dtype=D64)
    y = torch.randn(x.shape[0], 3, generator=g, dtype=D64)
    with pytest.warns(UserWarning, match="rank-deficient"):
        ad = Linear.fit(x, y)
    ref = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]  # numpy's minimum-norm solution
    np.testing.assert_allclose(ad.matrix.detach().numpy(), ref, atol=1e-8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Linear.fit(x, y, ridge=1e-3)  # regularised: well-posed, no warning


@pytest.mark.parametrize("n", [1, 3])
def test_rank_deficient_procrustes_warns_and_still_fits_exactly(n):
    x, Q, y = planted(n, 8, 8, 0.0, seed=9)
    with pytest.warns(UserWarning, match="not unique"):
        ad = Procrustes.fit(x, y)
    m = ad.matrix.detach()
    torch.testing.assert_close(m.T @ m, torch.eye(8, dtype=D64), atol=1e-10, rtol=0)
    torch.testing.assert_close(x @ m, y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name,bad", [("x", float("nan")), ("y", float("inf")), ("x", -float("inf"))])
def test_non_finite_values_name_the_argument_and_row(name, bad):
    x, y = torch.randn(30, 4), torch.randn(30, 4)
    {"x": x, "y": y}[name][17, 2] = bad
    with pytest.raises(ValueError, match=rf"{name} contains NaN or inf.*row 17"):
        Procrustes.fit(x, y)
    stats = SufficientStats(chunk_rows=8).update(x[:10], y[:10])
    with pytest.raises(ValueError, match=rf"{name} contains NaN or inf.*row 7"):
        stats.update(x[10:], y[10:])


def test_float64_overflow_is_named():
    huge = torch.full((4, 3), 1e308, dtype=D64)
    with pytest.raises(ValueError, match="x overflows float64"):
        Affine.fit(huge, torch.randn(4, 3, dtype=D64))


@pytest.mark.parametrize(
    "x,y,err,match",
    [
        (torch.randn(5, 4), torch.randn(6, 4), ValueError, "x has n=5 rows, y has n=6"),
        (torch.randn(4), torch.randn(4, 4), ValueError, "x must be 2-D"),
        (torch.randn(4, 4), torch.randn(2, 2, 4), ValueError, "y must be 2-D"),
        (torch.randn(0, 4), torch.randn(0, 4), ValueError, "n >= 1"),
        (torch.ones(5, 4, dtype=torch.long), torch.randn(5, 4), TypeError, "x must be a floating-point"),
    ],
)
def test_malformed_pairs_are_refused(x, y, err, match):
    for fit in (Procrustes.fit, Affine.fit, Linear.fit):
        with pytest.raises(err, match=match):
            fit(x, y)


@pytest.mark.parametrize("ridge", [-1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_ridge_is_refused(ridge):
    with pytest.raises(ValueError, match="ridge"):
        Affine.fit(torch.randn(10, 3), torch.randn(10, 3), ridge=ridge)


def test_stats_misuse_is_refused():
    stats = SufficientStats()
    with pytest.raises(ValueError, match="n=0"):
        Affine.fit_stats(stats)
    stats.update(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="widths changed"):
        stats.update(torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match="no closed-form fit"):
        fit_closed_form("mlp", stats)
    with pytest.raises(ValueError, match="chunk_rows"):
        SufficientStats(chunk_rows=0)
