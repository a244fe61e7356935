"""analyses.layer_similarity on tiny random models, and the similarity figures drawn from its records."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from transformers import AutoModelForCausalLM

import stitch
from analyses.cka import cka_matrix, linear_cka
from analyses.controls import control_models
from analyses.figures.similarity import best_match_curve, similarity_heatmap
from analyses.layer_similarity import LayerSimilarity, layer_similarity, paired_states, splice_cka
from analyses.similarity import permutation_null_matrix
from stitch.models import random_init
from tests.tiny import byte_bpe_tokenizer, tiny_model

ASCII = [  # one character per byte, so character spans are byte spans for the independent check
    "The quick brown fox jumps over the lazy dog.",
    "Stitching splices the residual stream of one model into another.",
    "Numbers like 3.14159 and 2026 appear, as do symbols: #, $, %.",
    "Hi",
    "Researchers want to know whether two models can read each other's states.",
    "Tabs\tand\nnewlines are text too.",
]


@pytest.fixture(scope="module")
def models():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(420)  # different merges: different cuts
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), n_layers=2), tokenizer=tok_a)
    B = stitch.load_model(
        tiny_model("mistral", vocab_size=len(tok_b), n_layers=3, d_model=48, seed=1), tokenizer=tok_b
    )
    return A, B


def per_text(model, text):
    """Unpadded forward of one text: all layers [pos, d] plus its (unpadded) Batch."""
    batch = model.encode([text])
    with torch.no_grad():
        res = model.residuals(batch, layers=list(range(model.n_layers + 1)))
    return {k: v[0] for k, v in res.items()}, batch


def test_record_shape_metadata_and_self_similarity(models):
    A, B = models
    rec = layer_similarity(A, A, ASCII, pairing="mean")
    assert isinstance(rec, LayerSimilarity)
    assert rec.matrix.shape == (A.n_layers + 1, A.n_layers + 1)
    assert torch.allclose(rec.matrix.diagonal(), torch.ones(A.n_layers + 1, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rec.matrix, rec.matrix.T, atol=1e-12)
    assert (rec.texts, rec.pairing, rec.measure, rec.n) == (tuple(ASCII), "mean", "linear_cka", len(ASCII))
    shared = layer_similarity(A, A, ASCII, pairing="shared")
    assert torch.allclose(
        shared.matrix.diagonal(), torch.ones(A.n_layers + 1, dtype=torch.float64), atol=1e-9
    )
    n_real = sum(int((~per_text(A, t)[1].special_mask[0]).sum()) for t in ASCII)
    assert shared.n == n_real  # one tokenizer: every real token pairs with itself
    rec_ab = layer_similarity(A, B, ASCII, pairing="mean")
    assert rec_ab.matrix.shape == (3, 4) and (rec_ab.source, rec_ab.target) == (A.name, B.name)
    assert rec_ab.to_dict()["matrix"] == rec_ab.matrix.tolist()
    assert torch.equal(rec_ab.best_match(), rec_ab.matrix.argmax(1))


def test_mean_pooling_matches_unpadded_per_text_means_without_special_tokens(models):
    A, B = models
    xs, ys = paired_states(A, B, ASCII, [0, 2], [1, 3], "mean", batch_size=4)  # padded batches of 4
    for i, text in enumerate(ASCII):
        for states, model, layers in ((xs, A, [0, 2]), (ys, B, [1, 3])):
            res, batch = per_text(model, text)
            real = ~batch.special_mask[0]
            assert batch.special_mask[0, 0]  # the BOS is there, and excluded
            for k, layer in enumerate(layers):
                expected = res[layer][real].mean(0)
                assert torch.allclose(states[k][i], expected, atol=1e-5), (text, layer)


def test_shared_pairing_matches_an_independent_span_computation(models):
    A, B = models
    xs, ys = paired_states(A, B, ASCII, [1], [2], "shared", batch_size=3)
    expected_a, expected_b = [], []
    for text in ASCII:
        (res_a, batch_a), (res_b, batch_b) = per_text(A, text), per_text(B, text)
        ends_a = {
            int(e): i
            for i, (e, sp) in enumerate(zip(batch_a.spans[0, :, 1], batch_a.special_mask[0], strict=True))
            if not sp
        }
        for j, (end, special) in enumerate(zip(batch_b.spans[0, :, 1], batch_b.special_mask[0], strict=True)):
            if not special and int(end) in ends_a:  # both have read text[:end], nothing more
                expected_a.append(res_a[1][ends_a[int(end)]])
                expected_b.append(res_b[2][j])
    assert 0 < len(expected_a) < sum(len(t) for t in ASCII)
    assert torch.allclose(xs[0], torch.stack(expected_a), atol=1e-5)
    assert torch.allclose(ys[0], torch.stack(expected_b), atol=1e-5)


def test_matrix_and_null_equal_the_analyses_on_the_paired_states(models):
    A, B = models
    rec = layer_similarity(
        A, B, ASCII, pairing="shared", measure="debiased_cka", null_permutations=15, seed=2
    )
    xs, ys = paired_states(A, B, ASCII, [0, 1, 2], [0, 1, 2, 3], "shared", batch_size=8)
    assert rec.n == xs[0].shape[0]
    assert torch.allclose(rec.matrix, cka_matrix(xs, ys, debiased=True), atol=1e-10)
    null = permutation_null_matrix(xs, ys, "debiased_cka", n_permutations=15, seed=2)
    assert torch.allclose(rec.null.p_value, null.p_value) and torch.allclose(
        rec.null.null_mean, null.null_mean
    )
    assert rec.null.observed is rec.matrix


def test_batch_size_does_not_change_the_answer(models):
    A, B = models
    one = layer_similarity(A, B, ASCII, pairing="mean", batch_size=1)
    many = layer_similarity(A, B, ASCII, pairing="mean", batch_size=6)
    assert torch.allclose(one.matrix, many.matrix, atol=1e-5)


def test_splice_cka_before_and_after(models):
    A, B = models
    ident = splice_cka(A, A, stitch.adapters.Identity(32), 1, 1, ASCII, pairing="shared")
    assert ident.before == pytest.approx(1.0) and ident.after == pytest.approx(1.0)
    assert ident.cosine_after == pytest.approx(1.0, abs=1e-6)
    q = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(0)))[0][:32]  # [32, 48]
    rotate = splice_cka(A, B, lambda x: 3 * x @ q, 2, 3, ASCII)  # CKA is blind to rotation and scale
    assert rotate.after == pytest.approx(rotate.before, abs=1e-6)
    squash = splice_cka(A, B, lambda x: x[..., :1] @ torch.ones(1, 48), 2, 3, ASCII)  # keeps one direction
    xs, ys = paired_states(A, B, ASCII, [2], [3], "shared", batch_size=8)
    assert squash.before == pytest.approx(linear_cka(xs[0], ys[0]), abs=1e-9)
    assert squash.after == pytest.approx(linear_cka(xs[0][:, :1], ys[0]), abs=1e-9)
    assert squash.after != pytest.approx(squash.before, abs=1e-3)
    assert squash.n == xs[0].shape[0] and squash.to_dict()["source_layer"] == 2


def test_bad_arguments_name_themselves(models):
    A, B = models
    with pytest.raises(ValueError, match=r"^pairing: 'tokens' is not one of"):
        layer_similarity(A, B, ASCII, pairing="tokens")
    with pytest.raises(ValueError, match=r"^measure: 'pearson'"):
        layer_similarity(A, B, ASCII, measure="pearson")
    with pytest.raises(ValueError, match=r"^null_permutations: -1"):
        layer_similarity(A, B, ASCII, null_permutations=-1)
    with pytest.raises(ValueError, match=r"^batch_size: 0"):
        layer_similarity(A, B, ASCII, batch_size=0)
    with pytest.raises(ValueError, match=r"^texts: expected a non-empty list"):
        layer_similarity(A, B, [])
    with pytest.raises(ValueError, match=r"^target_layer: layer 9 is out of range"):
        splice_cka(A, B, stitch.adapters.Identity(), 1, 9, ASCII)
    with pytest.raises(ValueError, match=r"^texts: 1 texts give 1 paired samples with pairing='mean'"):
        layer_similarity(A, B, ["one text only"])
    with pytest.raises(ValueError, match=r"^texts: 3 texts give 3 .* debiased_cka needs at least 4"):
        layer_similarity(A, B, ASCII[:3], measure="debiased_cka")
    with pytest.raises(ValueError, match=r"^control: 'shuffle' is not one of \['random-init'\]"):
        layer_similarity(A, B, ASCII, control="shuffle")


@pytest.mark.parametrize("measure", ["linear_cka", "rbf_cka"])
def test_two_texts_are_an_error_naming_texts_not_an_all_ones_matrix(models, measure):
    A, B = models
    with pytest.raises(
        ValueError, match=rf"^texts: 2 texts give 2 paired samples .* {measure} needs at least 3"
    ):
        layer_similarity(A, B, ASCII[:2], measure=measure)
    with pytest.raises(ValueError, match=r"^texts: 2 texts give 2 paired samples"):
        splice_cka(A, B, lambda x: x, 1, 1, ASCII[:2], pairing="mean", measure=measure)
    three = layer_similarity(A, B, ASCII[:3], measure=measure).matrix
    assert (three < 1 - 1e-6).any()  # three texts already say something


# ---- the random-init control ---------------------------------------------------------------------------


def _independent_random_init(model, seed):
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(model.model.config)
    return stitch.load_model(hf, tokenizer=model.tokenizer)


def test_random_init_control_is_built_from_the_models_configs(models):
    A, B = models
    state = torch.random.get_rng_state()
    A0, B0 = control_models("random-init", A, B, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    for model, control in ((A, A0), (B, B0)):
        assert control.model.config.to_dict() == model.model.config.to_dict()
        assert type(control.model) is type(model.model) and control.tokenizer is model.tokenizer
        assert (control.n_layers, control.d_model, control.dtype) == (
            model.n_layers,
            model.d_model,
            model.dtype,
        )
        weights, fresh = model.model.state_dict(), control.model.state_dict()
        assert weights.keys() == fresh.keys()
        assert not torch.equal(weights["model.embed_tokens.weight"], fresh["model.embed_tokens.weight"])
    again = random_init(A, seed=5).model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in A0.model.state_dict().items())  # seeded: reproducible
    self_a, self_b = control_models("random-init", A, A, seed=5)  # a model against itself: two random inits
    assert not torch.equal(self_a.model.model.embed_tokens.weight, self_b.model.model.embed_tokens.weight)


@pytest.mark.parametrize("pairing", ["mean", "shared"])
def test_control_matrix_equals_an_independent_computation_on_random_init_models(models, pairing):
    A, B = models
    rec = layer_similarity(A, B, ASCII, pairing=pairing, control="random-init", seed=3)
    A0, B0 = _independent_random_init(A, 3), _independent_random_init(B, 4)
    xs, ys = paired_states(A0, B0, ASCII, [0, 1, 2], [0, 1, 2, 3], pairing, batch_size=8)
    assert rec.control.shape == rec.matrix.shape == (3, 4)
    assert torch.allclose(rec.control, cka_matrix(xs, ys), atol=1e-10)
    assert not torch.allclose(rec.control, rec.matrix, atol=1e-3)  # the models' own weights are not the control's
    assert (rec.control_kind, rec.control_seed) == ("random-init", 3)
    assert torch.equal(rec.excess(), rec.matrix - rec.control)
    assert rec.to_dict()["control"] == rec.control.tolist() and rec.to_dict()["control_kind"] == "random-init"
    plain = layer_similarity(A, B, ASCII, pairing=pairing)
    assert torch.equal(plain.matrix, rec.matrix) and plain.control is None
    with pytest.raises(ValueError, match=r"^control: this record has none"):
        plain.excess()


# ---- figures -------------------------------------------------------------------------------------------


def _record_with_null():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 8, generator=g)
    xs = [h := h + 0.3 * torch.randn(40, 8, generator=g) for _ in range(5)]
    ys = [xs[2 * j] + (0.2 + 2 * j) * torch.randn(40, 8, generator=g) for j in range(3)]
    null = permutation_null_matrix(xs, ys, n_permutations=40)
    return LayerSimilarity(null.observed, ("t",), "mean", "linear_cka", 40, "A-model", "B-model", null)


def test_heatmap_axes_hover_and_chance_mask():
    rec = _record_with_null()
    fig = similarity_heatmap(rec)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    grey, main = fig.data
    above = rec.null.above_chance().numpy()
    assert not above.all() and above.any()  # the fixture has both kinds of cells
    values = rec.matrix.numpy()
    assert np.array_equal(np.isnan(np.array(main.z, float)), ~above)
    assert np.allclose(np.array(main.z, float)[above], values[above])
    assert np.allclose(np.array(grey.z, float)[~above], values[~above])
    assert list(main.x) == [0, 1, 2] and list(main.y) == [0, 1, 2, 3, 4]
    assert "A-model layer %{y}" in main.hovertemplate and "%{z:.4f}" in main.hovertemplate
    assert "p = %{customdata[1]" in main.hovertemplate
    assert np.allclose(np.array(main.customdata)[..., 1], rec.null.p_value.numpy())
    assert fig.layout.xaxis.title.text == "B-model layer ℓ (0 = embeddings)"
    assert fig.layout.yaxis.title.text == "A-model layer ℓ (0 = embeddings)"
    assert (main.zmin, main.zmax) == (0, 1) and main.colorbar.title.text == "linear CKA"  # fixed CKA scale
    assert grey.hoverongaps is False and main.hoverongaps is False  # a grey cell answers from the grey trace
    assert "grey: not above chance" in fig.layout.title.text
    unmasked = similarity_heatmap(rec, mask_chance=False)
    assert len(unmasked.data) == 1 and np.allclose(np.array(unmasked.data[0].z, float), values)


def test_heatmap_of_a_bare_matrix_and_bad_inputs():
    m = torch.rand(4, 6, dtype=torch.float64)
    fig = similarity_heatmap(m, title="mine")
    assert len(fig.data) == 1 and np.allclose(np.array(fig.data[0].z, float), m.numpy())
    assert fig.layout.title.text == "mine" and "p =" not in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match=r"^record: expected a \[layer_x, layer_y\] matrix"):
        similarity_heatmap(torch.rand(4))
    with pytest.raises(ValueError, match=r"^alpha: 2"):
        similarity_heatmap(m, alpha=2)
    with pytest.raises(ValueError, match=r"^null: p-values of shape"):
        similarity_heatmap(m, null=_record_with_null().null)


def _record_with_control():
    rec = _record_with_null()
    control = rec.matrix * 0.5 + 0.1
    return LayerSimilarity(
        rec.matrix,
        rec.texts,
        "mean",
        "linear_cka",
        40,
        "A-model",
        "B-model",
        rec.null,
        control,
        "random-init",
        7,
    )


def test_heatmap_shows_the_excess_over_the_control():
    rec = _record_with_control()
    fig = similarity_heatmap(rec, relative_to="control", mask_chance=False)
    (trace,) = fig.data
    excess = (rec.matrix - rec.control).numpy()
    assert np.allclose(np.array(trace.z, float), excess)
    top = np.abs(excess).max()
    assert (trace.zmid, trace.zmin, trace.zmax) == (0, -top, top) and trace.colorscale[0][1] != "#d9d9d9"
    custom = np.array(trace.customdata)
    assert np.allclose(custom[..., 2], rec.matrix.numpy()) and np.allclose(
        custom[..., 3], rec.control.numpy()
    )
    assert (
        "excess %{z:.4f}" in trace.hovertemplate
        and "random-init control %{customdata[3]" in trace.hovertemplate
    )
    assert trace.colorbar.title.text == "linear CKA − random-init control"
    assert "over random-init control" in fig.layout.title.text and "seed 7" in fig.layout.title.text
    masked = similarity_heatmap(rec, relative_to="control")  # the permutation mask still applies
    above = rec.null.above_chance().numpy()
    assert np.allclose(np.array(masked.data[1].z, float)[above], excess[above])
    plain = similarity_heatmap(rec, mask_chance=False)  # by default the value itself
    assert np.allclose(np.array(plain.data[0].z, float), rec.matrix.numpy())
    distance = LayerSimilarity(
        1 - rec.matrix, ("t",), "mean", "alignment", 40, "A", "B", None, 1 - rec.control
    )
    z = np.array(similarity_heatmap(distance, relative_to="control").data[0].z, float)
    assert np.allclose(z, excess)  # lower is more similar: the excess keeps "positive = more alike"
    with pytest.raises(ValueError, match=r"^relative_to: 'control' needs a record with a control matrix"):
        similarity_heatmap(_record_with_null(), relative_to="control")
    with pytest.raises(ValueError, match=r"^relative_to: 'null' is not one of \[None, 'control'\]"):
        similarity_heatmap(rec, relative_to="null")


def test_best_match_curve():
    rec = _record_with_null()
    fig = best_match_curve(rec)
    diagonal, curve = fig.data
    assert list(curve.y) == rec.best_match().tolist()
    assert np.allclose(curve.customdata, rec.matrix.max(1).values.numpy())
    above = rec.null.above_chance()[torch.arange(5), rec.best_match()].tolist()
    assert list(curve.marker.symbol) == ["circle" if a else "circle-open" for a in above]
    assert np.allclose(diagonal.y, np.arange(5) * 2 / 4)  # equal relative depth: 0..L_A -> 0..L_B
    assert fig.layout.xaxis.title.text == "A-model layer ℓ (0 = embeddings)"
    assert "hollow markers: not above chance" in fig.layout.title.text and "grey" not in fig.layout.title.text
    distance = LayerSimilarity(1 - rec.matrix, ("t",), "mean", "alignment", 40, "A-model", "B-model")
    assert list(best_match_curve(distance).data[1].y) == rec.best_match().tolist()  # lower = more similar


def test_heatmap_of_33_by_29_layers_is_readable():
    fig = similarity_heatmap(torch.rand(33, 29), source="Llama-3.1-8B", target="Mistral-7B")
    assert (fig.layout.yaxis.dtick, fig.layout.xaxis.dtick) == (2, 2)  # <= 17 labels per axis, whole layers
    size, margin = (fig.layout.width, fig.layout.height), fig.layout.margin
    plot_w, plot_h = size[0] - margin.l - margin.r, size[1] - margin.t - margin.b
    assert plot_w / plot_h == pytest.approx(29 / 33, rel=0.02)  # square cells: colour bar beside the map


def test_best_match_takes_the_minimum_for_distance_measures():
    from analyses.layer_similarity import LayerSimilarity

    matrix = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)
    kw = dict(texts=["t"], pairing="mean", n=4, source="A", target="B", null=None)
    assert LayerSimilarity(matrix=matrix, measure="linear_cka", **kw).best_match().tolist() == [1, 0]
    assert LayerSimilarity(matrix=matrix, measure="alignment", **kw).best_match().tolist() == [0, 1]
