"""Token-conditioned adapters: the conditioning from the pairing, reduction at shared positions, fits, work."""

import warnings

import pytest
import torch

import stitch
from analyses.sweep import layer_sweep
from stitch.adapters import (
    TokenConditioned,
    TokenConditionedMLP,
    condition_features,
    load_adapter,
    save_adapter,
)
from stitch.adapters.fit import collect_stats, fit_adapter
from stitch.models.states import input_embeddings
from tests.test_injection_positions import twin
from tests.test_model import count_block_calls
from tests.test_score import HELD_OUT, TRAIN, independent_classes, lagging_pair  # noqa: F401
from tests.tiny import tiny_model


def random_conditioned(d_source, d_target, window=2, seed=0):
    """A token-conditioned adapter that is the identity on A's state but reads its conditioning strongly."""
    ad = TokenConditioned(d_source, d_target, window=window)
    with torch.no_grad():
        ad.condition_weight.copy_(torch.randn(ad.condition_weight.shape, generator=torch.Generator().manual_seed(seed)))
    return ad


def test_since_boundary_matches_an_independent_scan_of_byte_spans(lagging_pair):
    A, B = lagging_pair
    pairing = stitch.alignment.pairing.pair_texts(A, B, HELD_OUT, padding_side="left")
    index = pairing.since_boundary(3)
    for row, text in enumerate(HELD_OUT):
        classes = independent_classes(A, B, text)
        offset = int((pairing.target.attention_mask[row] == 0).sum())  # left padding
        last = -1
        for j, cls in enumerate(classes):
            last = j if cls == "shared" else last
            expected = [j - i + offset if j - i > last else -1 for i in range(3)]
            assert index[row, j + offset].tolist() == expected, (row, j)
        assert (index[row, :offset] == -1).all()


def test_condition_features_are_the_documented_rule():
    embeds = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    index = torch.tensor([[[0, -1], [1, 0], [-1, -1], [3, -1]], [[-1, -1]] * 4])
    c = condition_features(embeds, index)
    assert c.shape == (2, 4, 2 * 3 + 1)
    assert c[0, 1].tolist() == [*embeds[0, 1].tolist(), *embeds[0, 0].tolist(), 1.0]
    assert c[0, 0].tolist() == [*embeds[0, 0].tolist(), 0, 0, 0, 1.0]
    assert (c[0, 2] == 0).all() and (c[1] == 0).all()  # shared positions and padding: zero, flag 0


def test_at_shared_positions_the_adapter_input_is_as_state_alone(lagging_pair):
    A, B = lagging_pair
    conditioned = random_conditioned(A.d_model, B.d_model)
    plain = stitch.adapters.Affine(A.d_model, B.d_model)
    with torch.no_grad():
        plain.weight.copy_(conditioned.weight)
        plain.bias.copy_(torch.randn(B.d_model))
        conditioned.bias.copy_(plain.bias)
    pairing = stitch.alignment.pairing.pair_texts(A, B, HELD_OUT)
    states = A.residuals(pairing.source, [2])[2]
    ours = stitch.Splice(A, B, 2, adapter=conditioned).map_states(states, pairing)
    theirs = stitch.Splice(A, B, 2, adapter=plain).map_states(states, pairing)
    shared, other = pairing.class_mask("shared"), pairing.class_mask("lagging") | pairing.class_mask("none")
    assert torch.equal(ours[shared], theirs[shared])
    assert (ours[other] - theirs[other]).abs().amax(-1).min() > 1e-3  # every other position is conditioned


@pytest.mark.parametrize("injection, positions", [("residual", None), ("residual", "last"), ("hybrid", None)])
def test_self_stitch_identity_with_a_token_conditioned_adapter(tok, texts, injection, positions):
    A = stitch.load_model(tiny_model("qwen3", vocab_size=len(tok)), tokenizer=tok)
    native = A.logits(A.encode(texts))
    for B in (A, twin(A)):  # the twin pairs two tokenizations: every position shared, conditioning zero
        for layer in range(A.n_layers + 1):
            sp = stitch.Splice(A, B, layer, adapter=random_conditioned(A.d_model, A.d_model),
                               injection=injection, positions=positions)
            out = sp(texts)
            real = out.target.attention_mask.bool()
            assert (out.logits - native)[real].abs().max() <= 1e-5, (layer, injection)


def test_token_conditioned_splice_runs_n_blocks_of_a_and_l_minus_m_of_b(lagging_pair):
    A, B = lagging_pair
    for n, m in [(0, 0), (1, 3), (3, 1), (2, 4)]:
        sp = stitch.Splice(A, B, n, m, adapter=random_conditioned(A.d_model, B.d_model))
        with count_block_calls(A) as calls_a, count_block_calls(B) as calls_b:
            sp(HELD_OUT)
        assert calls_a.counts == [1] * n + [0] * (A.n_layers - n)
        assert calls_b.counts == [0] * m + [1] * (B.n_layers - m)
        assert sp.blocks_run == {"A": (0, n), "B": (m, B.n_layers)}


def test_closed_form_fit_equals_least_squares_on_the_concatenated_features(lagging_pair):
    A, B = lagging_pair
    ad = fit_adapter(A, B, TRAIN, 2, 3, kind="token_conditioned", window=2, ridge=0.0, progress=False)
    pairing = stitch.alignment.pairing.pair_texts(A, B, TRAIN)
    rows, src, tgt = pairing.pairs(keep_none=True)
    x = A.residuals(pairing.source, [2])[2][rows, src.clamp(min=0)] * (src >= 0).unsqueeze(-1)
    c = condition_features(input_embeddings(B, pairing.target), pairing.since_boundary(2))[rows, tgt]
    y = B.residuals(pairing.target, [3])[3][rows, tgt]
    design = torch.cat([x, c, torch.ones(len(rows), 1)], dim=-1).double()
    solution = torch.linalg.pinv(design) @ y.double()  # minimum-norm least squares, by another route
    predicted = (design @ solution).float()
    torch.testing.assert_close(ad(x, c), predicted, rtol=0, atol=2e-4)


def test_fit_needs_statistics_with_the_features(lagging_pair):
    A, B = lagging_pair
    plain = collect_stats(A, B, TRAIN, [(2, 2)], progress=False)[(2, 2)]
    with pytest.raises(ValueError, match="collect them with collect_stats"):
        TokenConditioned.fit_stats(plain, window=2)
    with pytest.raises(TypeError, match="window"):
        fit_adapter(A, B, TRAIN, 2, kind="affine", window=2, progress=False)


def test_lagging_ce_falls_below_the_plain_splice_and_shared_stays(lagging_pair):
    A, B = lagging_pair
    common = dict(pairs=[(1, 1), (2, 2), (3, 3)], baseline=False, progress=False, ridge=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = layer_sweep(A, B, TRAIN, HELD_OUT, kind="affine", **common)
        conditioned = layer_sweep(A, B, TRAIN, HELD_OUT, kind="token_conditioned", **common)
    gains = []
    for p, c in zip(plain, conditioned, strict=True):
        assert c.classes["lagging"].n_tokens == p.classes["lagging"].n_tokens > 20
        gains.append(p.classes["lagging"].ce_spliced - c.classes["lagging"].ce_spliced)
        assert gains[-1] > 0, p.source_layer
        # shared CE within noise: 0.05 nats is a fraction of the standard error of ~50 labels' mean CE
        assert c.classes["shared"].ce_spliced < p.classes["shared"].ce_spliced + 0.05, p.source_layer
    assert sum(gains) / len(gains) > 0.2  # 0.35, 0.34, 0.05 nats when written


@pytest.mark.parametrize("cls, options", [(TokenConditioned, {}), (TokenConditionedMLP, {"hidden": 8})])
def test_save_and_load_are_exact(tmp_path, cls, options):
    ad = cls(6, 5, window=3, **options)
    with torch.no_grad():
        for p in ad.parameters():
            p.copy_(torch.randn_like(p))
    x, c = torch.randn(4, 6), torch.randn(4, 3 * 5 + 1)
    back = load_adapter(save_adapter(ad, tmp_path / "ad.safetensors", source_layer=1))
    assert type(back) is cls and back.window == 3
    assert torch.equal(back(x, c), ad(x, c))


def test_the_mlp_variant_starts_as_the_affine_map_and_trains(lagging_pair):
    A, B = lagging_pair
    mlp = TokenConditionedMLP(A.d_model, B.d_model, window=1, hidden=16)
    x, c = torch.randn(3, A.d_model), torch.randn(3, B.d_model + 1)
    torch.testing.assert_close(mlp(x, c), TokenConditioned._map(mlp, x, c), rtol=0, atol=0)
    sp = stitch.Splice(A, B, 2, adapter=mlp)
    sp(HELD_OUT).loss.backward()
    assert mlp.down.weight.grad.abs().sum() > 0 and mlp.condition_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"condition: expected shape \[3, 49\]"):
        mlp(x, torch.randn(3, 7))
