"""Adapter modules: shapes, configs, parameter counts, starting maps, dtypes and bad arguments."""

import pytest
import torch

from stitch import adapters
from stitch.adapters import (
    ADAPTERS,
    MLP,
    Affine,
    Identity,
    Linear,
    LowRank,
    Procrustes,
    Projection,
    build_adapter,
)

WIDTHS = [(8, 8), (6, 10), (10, 6)]


def make(kind, d_source, d_target):
    if kind == "identity":
        return Identity(d_source) if d_source == d_target else None
    extra = {"rank": 3} if kind == "lowrank" else {}
    return build_adapter(kind, d_source=d_source, d_target=d_target, **extra)


def all_adapters():
    for kind in sorted(ADAPTERS):
        for ds, dt in WIDTHS:
            ad = make(kind, ds, dt)
            if ad is not None:
                yield pytest.param(ad, id=f"{kind}-{ds}-{dt}")


def test_registry_holds_every_contract_kind():
    names = {"identity", "procrustes", "affine", "linear", "lowrank", "mlp", "projection"}
    assert names <= set(ADAPTERS)
    for name in names:
        assert ADAPTERS[name].kind == name
    assert adapters.adapter_class("Procrustes") is Procrustes


@pytest.mark.parametrize("ad", all_adapters())
def test_maps_any_leading_shape_and_reports_widths(ad):
    assert isinstance(ad.d_source, int) and isinstance(ad.d_target, int)
    for lead in [(5,), (2, 3), (1, 2, 4)]:
        out = ad(torch.randn(*lead, ad.d_source))
        assert out.shape == (*lead, ad.d_target)


@pytest.mark.parametrize("ad", all_adapters())
def test_config_rebuilds_the_same_architecture(ad):
    again = build_adapter(ad.kind, **ad.config())
    assert again.config() == ad.config()
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in ad.state_dict().items()
    }
    again.load_state_dict(ad.state_dict())
    x = torch.randn(4, ad.d_source)
    torch.testing.assert_close(again(x), ad(x), rtol=0, atol=0)


def test_parameter_counts_match_hand_formulas():
    d, r, h = 12, 4, 7
    assert Identity().n_parameters() == 0
    assert Linear(d, 9).n_parameters() == d * 9
    assert Affine(d, 9).n_parameters() == d * 9 + 9
    assert Projection(d, 9, bias=True).n_parameters() == d * 9 + 9
    assert Procrustes(d, scale=True, translation=True).n_parameters() == d * d + 1 + d
    assert LowRank(d, rank=r).n_parameters() == 2 * d * r
    assert LowRank(d, 9, rank=r).n_parameters() == d * 9 + d * r + r * 9
    ln, up, down = 2 * d, d * h + h, h * d + d
    assert MLP(d, hidden=h).n_parameters() == ln + up + down
    assert MLP(d, hidden=h, norm=False).n_parameters() == up + down
    frozen = Affine(d)
    frozen.bias.requires_grad_(False)
    assert frozen.n_parameters(trainable_only=True) == d * d


def test_identity_accepts_any_width_unless_given_one():
    x = torch.randn(2, 3, 17)
    assert Identity()(x) is x
    assert Identity().d_source is None and Identity(5).d_source == 5
    with pytest.raises(ValueError, match="d_source=5"):
        Identity(5)(x)


@pytest.mark.parametrize("kind", ["linear", "affine", "procrustes", "lowrank", "mlp"])
def test_square_adapters_start_as_the_identity(kind):
    ad = make(kind, 8, 8)
    x = torch.randn(5, 8)
    torch.testing.assert_close(ad(x), x)


@pytest.mark.parametrize("ds,dt", [(6, 10), (10, 6)])
def test_projection_starts_semi_orthogonal_and_residual_adapters_start_as_it(ds, dt):
    proj = Projection(ds, dt)
    m = proj.matrix.detach()
    small = torch.eye(min(ds, dt))
    torch.testing.assert_close(m @ m.T if ds < dt else m.T @ m, small)
    x = torch.randn(5, ds)
    for ad in (LowRank(ds, dt, rank=2), MLP(ds, dt)):
        torch.testing.assert_close(ad(x), ad.skip(x))


def test_procrustes_project_snaps_back_to_orthogonal():
    ad = Procrustes(6, 9)
    with torch.no_grad():
        ad.weight.add_(0.3 * torch.randn_like(ad.weight))
    m = ad.project_().matrix.detach()
    torch.testing.assert_close(m @ m.T, torch.eye(6), atol=1e-6, rtol=0)


def test_gradients_reach_every_trainable_parameter():
    for ad in (LowRank(6, rank=2), MLP(6, 9), Procrustes(6, scale=True, translation=True), Affine(6, 4)):
        ad(torch.randn(3, 6)).pow(2).sum().backward()
        assert all(p.grad is not None for p in ad.parameters())
    # the zero-initialised up-projection gets a gradient: LowRank does learn from its identity start
    lr = LowRank(6, rank=2)
    (lr(torch.randn(3, 6)) * torch.randn(3, 6)).sum().backward()
    assert lr.up.weight.grad.abs().sum() > 0


def test_float32_adapter_serves_bfloat16_states():
    ad = Affine(8, 4)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = ad(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ad(x.float()), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "ctor, match",
    [
        (lambda: Linear(0), "d_source"),
        (lambda: Affine(4, -2), "d_target"),
        (lambda: LowRank(4, rank=5), "rank"),
        (lambda: LowRank(4, rank=0), "rank"),
        (lambda: LowRank(4, rank=2, scale=float("nan")), "scale"),
        (lambda: MLP(4, activation="swish"), "activation"),
        (lambda: Projection(4, 5, init="xavier"), "init"),
        (lambda: build_adapter("rotation", d_source=4), "valid kinds"),
    ],
)
def test_bad_arguments_name_the_parameter(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


@pytest.mark.parametrize("bad", [4.0, True, "4"])
def test_non_integer_widths_are_type_errors(bad):
    with pytest.raises(TypeError, match="d_source"):
        Affine(bad)


def test_wrong_input_width_and_type_are_refused():
    ad = Affine(8, 4)
    with pytest.raises(ValueError, match=r"d_source=8.*\(3, 5\)"):
        ad(torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating point"):
        ad(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ad([[0.0] * 8])
