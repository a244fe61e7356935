"""Layer sweep: every number against an independent computation, ground truth on a rotated copy, figure."""

import copy
import dataclasses

import plotly.graph_objects as go
import pytest
import torch

import analyses.sweep
import stitch
from analyses.figures.sweep import sweep_figure
from analyses.sweep import SweepRecord, layer_sweep, matching_layers
from stitch.adapters.fit import EMBEDDINGS, collect_stats, fit_adapter
from stitch.adapters.linear import fit_closed_form
from stitch.losses import IGNORE, mean_cross_entropy, next_token_labels, token_cross_entropy
from stitch.splice.score import References, score_splices
from stitch.testing import fold_norm_gains, rotate_residual, train_briefly
from tests.tiny import CORPUS, byte_bpe_tokenizer, tiny_model

TRAIN = CORPUS[:6]


@pytest.fixture(scope="module")
def cross_pair(tok):
    """A (llama, width 32, 300-token vocab) and B (qwen2, width 48, 4 layers, a 1200-token vocab)."""
    tok_b = byte_bpe_tokenizer(vocab_size=1200)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=3), tokenizer=tok)
    B = stitch.load_model(
        tiny_model("qwen2", vocab_size=len(tok_b), n_layers=4, d_model=48, seed=4), tokenizer=tok_b
    )
    return A, B


@pytest.fixture(scope="module")
def cross_records(cross_pair, texts):
    A, B = cross_pair
    return layer_sweep(A, B, TRAIN, texts, source_layers=[0, 2, 3], kind="affine", ridge=1e-3, progress=False)


def test_matching_layers():
    assert matching_layers([0, 1, 2, 3, 4], 4, 2, "relative") == [0, 1, 1, 2, 2]
    assert matching_layers([0, 3], 3, 4, "relative") == [0, 4]
    assert matching_layers([1, 2], 3, 4, "same") == [1, 2]
    with pytest.raises(ValueError, match="match='relative'"):
        matching_layers([3], 3, 2, "same")
    with pytest.raises(ValueError, match="match"):
        matching_layers([1], 3, 3, "closest")


def test_records_cover_every_layer_and_both_injections(cross_records):
    residual = [(r.source_layer, r.target_layer) for r in cross_records if r.injection == "residual"]
    baseline = [(r.source_layer, r.target_layer) for r in cross_records if r.injection == "inputs_embeds"]
    assert residual == [(0, 0), (2, 3), (3, 4)]  # relative depth: 3 layers of A against 4 of B
    assert baseline == [(0, 0), (2, 0), (3, 0)]
    assert (
        len({r.ce_native for r in cross_records}) == 1 and len({r.n_eval_tokens for r in cross_records}) == 1
    )
    assert all(r.kind == "affine" and r.n_train_pairs > 48 for r in cross_records)


def test_every_number_matches_an_independent_computation(cross_pair, cross_records, texts):
    A, B = cross_pair
    target = B.encode(texts)
    labels = next_token_labels(target)
    keep = labels != IGNORE
    native = token_cross_entropy(B.logits(target), labels)
    for r in cross_records:
        assert r.classes["all"].ce_native == pytest.approx(native[keep].mean().item(), abs=1e-5)
        m = EMBEDDINGS if r.injection == "inputs_embeds" else r.target_layer
        ad = fit_adapter(A, B, TRAIN, r.source_layer, m, kind="affine", ridge=1e-3, progress=False)
        sp = stitch.Splice(A, B, r.source_layer, r.target_layer, adapter=ad, injection=r.injection)
        assert r.classes["all"].ce_spliced == pytest.approx(sp(texts).loss.item(), abs=1e-5)
        mean = mean_target_state(B, m)
        constant = mean.expand(*target.shape, -1)
        logits = B.run_from_embeds(constant, target) if m == EMBEDDINGS else B.run_from(constant, m, target)
        ablated = mean_cross_entropy(logits, labels).item()
        assert r.classes["all"].ce_mean_ablation == pytest.approx(ablated, abs=1e-5)
        c = r.classes["all"]
        assert c.loss_recovered == pytest.approx(
            (c.ce_context_free - c.ce_spliced) / (c.ce_context_free - c.ce_native), rel=1e-9
        )


def mean_target_state(B, m):
    """B's mean state at layer m over the training texts' real, non-special tokens, text by text."""
    rows = []
    for text in TRAIN:
        batch = B.encode([text])
        with torch.no_grad():
            states = (
                B.model.get_input_embeddings()(batch.input_ids)
                if m == EMBEDDINGS
                else B.residuals(batch, [m])[m]
            )
        rows.append(states[0][~batch.special_mask[0]])
    return torch.cat(rows).double().mean(0).float()


def briefly_trained_llama(tok):
    """A tiny Llama trained for a few steps on TRAIN, so that its own states beat the mean state."""
    model = tiny_model("llama", vocab_size=len(tok), n_layers=3, d_model=32, seed=5)
    return train_briefly(model, tok, TRAIN, steps=15)


def test_rotated_copy_recovers_all_the_loss(tok, texts):
    original = briefly_trained_llama(tok)
    Q = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(6)))[0]
    rotated = copy.deepcopy(original)
    fold_norm_gains(rotated)
    rotate_residual(rotated, Q)
    A, B = stitch.load_model(original, tokenizer=tok), stitch.load_model(rotated, tokenizer=tok)
    records = layer_sweep(A, B, TRAIN, texts, kind="procrustes", progress=False)
    assert len(records) == 2 * (A.n_layers + 1)
    for r in records:
        assert r.ce_context_free - r.ce_native > 0.5  # the model uses its states: the ratio means something
        if r.injection == "residual" or r.source_layer == 0:
            assert abs(r.ce_spliced - r.ce_native) < 1e-5 and r.loss_recovered == pytest.approx(1.0, abs=1e-4)
        else:  # a deep state read as an embedding: the flawed baseline loses what the splice keeps
            assert r.loss_recovered < 0.95


def test_figure_and_record_round_trip(cross_records):
    dicts = [r.to_dict() for r in cross_records]
    assert [SweepRecord.from_dict(d).to_dict() for d in dicts] == dicts  # NaN != NaN: compare as JSON
    fig = sweep_figure(dicts)
    assert isinstance(fig, go.Figure)
    names = {t.name for t in fig.data}
    residual, embeds = "residual splice, target grid", "embedding injection, target grid"
    assert {residual, embeds, "B native (shared)", "context-free unigram (shared)"} <= names
    assert {f"{residual}: {c}" for c in ("shared", "all")} <= names
    curve = next(t for t in fig.data if t.name == residual)
    assert list(curve.x) == [0, 2, 3]
    assert list(curve.y) == [r.loss_recovered for r in cross_records if r.injection == "residual"]
    assert fig.layout.xaxis2.title.text == "A layer N (0 = embeddings)" and fig.layout.xaxis2.dtick == 1
    named = sweep_figure(dicts, source="Llama", target="Mistral")
    assert "Llama → Mistral" in named.layout.title.text and "Mistral native (shared)" in {t.name for t in named.data}
    with pytest.raises(ValueError, match="records"):
        sweep_figure([])


def test_figure_flags_undefined_ratios_instead_of_plotting_them(cross_records):
    broken = cross_records[0]
    nan_class = dataclasses.replace(broken.classes["shared"], loss_recovered=float("nan"), note="undefined: test")
    score = dataclasses.replace(broken.score, classes={**broken.classes, "shared": nan_class})
    record = dataclasses.replace(broken, score=score)
    fig = sweep_figure([record, *cross_records[1:]])
    curve = next(t for t in fig.data if t.name == "residual splice, target grid")
    assert curve.y[0] is None
    flag = next(t for t in fig.data if t.name == "residual splice, target grid: undefined")
    assert list(flag.x) == [record.source_layer] and list(flag.text) == ["undefined: test"]


def test_bad_sweep_arguments(cross_pair, texts):
    A, B = cross_pair
    with pytest.raises(ValueError, match="no closed-form fit"):
        layer_sweep(A, B, TRAIN, texts, kind="mlp", progress=False)
    with pytest.raises(TypeError, match="ridge"):
        layer_sweep(A, B, TRAIN, texts, kind="procrustes", ridge=1.0, progress=False)
    with pytest.raises(ValueError, match="source_layers"):
        layer_sweep(A, B, TRAIN, texts, source_layers=[7], progress=False)
    with pytest.raises(ValueError, match="texts"):
        layer_sweep(A, B, TRAIN, [], progress=False)
    with pytest.raises(ValueError, match=r"^source_layers: expected a non-empty list"):
        layer_sweep(A, B, TRAIN, texts, source_layers=[], progress=False)
    with pytest.raises(TypeError, match=r"^source_layers: expected a list of layers, got 2 \(int\)"):
        layer_sweep(A, B, TRAIN, texts, source_layers=2, progress=False)
    with pytest.raises(ValueError, match=r"^alignment: 'diagonal' is not one of"):
        layer_sweep(A, B, TRAIN, texts, alignment="diagonal", progress=False)
    with pytest.raises(ValueError, match=r"^injection: 'embeds' is not one of"):
        layer_sweep(A, B, TRAIN, texts, injection="embeds", progress=False)
    with pytest.raises(ValueError, match=r"^pairs\[0\]\[1\] \(B's layer\): layer 9 is out of range"):
        layer_sweep(A, B, TRAIN, texts, pairs=[(1, 9)], progress=False)
    with pytest.raises(ValueError, match=r"^pairs: give either"):
        layer_sweep(A, B, TRAIN, texts, pairs=[(1, 1)], source_layers=[1], progress=False)
    with pytest.raises(ValueError, match=r"^pairs\[0\]: expected"):
        layer_sweep(A, B, TRAIN, texts, pairs=[1], progress=False)


def test_explicit_pairs_both_grids_and_saved_adapters(cross_pair, texts, tmp_path):
    A, B = cross_pair
    records = layer_sweep(
        A, B, TRAIN, texts, pairs=[(2, 2), (3, 1)], alignment=["target", "source"], baseline=False,
        save_dir=tmp_path, progress=False,
    )
    assert [(r.source_layer, r.target_layer, r.alignment) for r in records] == [
        (2, 2, "target"), (3, 1, "target"), (2, 2, "source"), (3, 1, "source")
    ]
    for r in records:
        loaded = stitch.load_adapter(r.adapter_path)
        assert torch.equal(loaded.weight, r.adapter.weight)
        if r.alignment == "source":  # every source-grid label is shared by construction
            assert r.classes["all"] == r.classes["shared"]


def test_figure_native_line_is_in_layer_order_without_residual_rows(cross_records):
    baseline_only = [r for r in cross_records if r.injection == "inputs_embeds"][::-1]
    native = next(t for t in sweep_figure(baseline_only).data if t.name == "B native (shared)")
    assert list(native.x) == sorted(r.source_layer for r in baseline_only)


@pytest.fixture(scope="module")
def lagging_pair(tok):
    """A's tokens are longer than B's (1200- vs 300-token BPE): B has lagging positions, shared ones are fewer."""
    tok_a = byte_bpe_tokenizer(vocab_size=1200)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), seed=3), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("qwen2", vocab_size=len(tok), n_layers=4, d_model=48, seed=4), tokenizer=tok)
    return A, B


MIXED = dict(pairs=[(2, 2), (3, 1)], alignment=["target", "source"], injection=["residual", "hybrid"],
             kind="affine", ridge=1e-3, batch_size=4, progress=False)  # fits on all pairs and on shared ones


def two_pass_scores(A, B, train, held_out, records, kind):
    """The sweep as it was: collect_stats per splice, then References.build over the texts again."""
    window = 2 if kind == "token_conditioned" else None
    splices = []
    for r in records:
        shared = r.alignment == "source" or r.injection == "hybrid"  # the splice writes only at shared positions
        point = EMBEDDINGS if r.injection == "inputs_embeds" else r.target_layer
        stats = collect_stats(A, B, train, [(r.source_layer, point)], batch_size=4, progress=False, window=window,
                              classes=["shared"] if shared else None)[r.source_layer, point]
        adapter = fit_closed_form(kind, stats, ridge=1e-3).float()
        splices.append((stitch.Splice(A, B, r.source_layer, r.target_layer, adapter=adapter, alignment=r.alignment,
                                      injection=r.injection), stats.n))
    refs = References.build(A, B, train, [sp.write_point for sp, _ in splices], batch_size=4)
    return splices, score_splices([sp for sp, _ in splices], held_out, refs, batch_size=4, progress=False)


@pytest.mark.parametrize("kind", ["affine", "token_conditioned"])
def test_one_pass_sweep_equals_the_two_pass_computation(lagging_pair, texts, kind):
    A, B = lagging_pair
    records = layer_sweep(A, B, TRAIN, texts, **{**MIXED, "kind": kind})
    assert {(r.alignment, r.injection) for r in records} == {
        ("target", "residual"), ("target", "hybrid"), ("target", "inputs_embeds"), ("source", "residual"),
        ("source", "inputs_embeds")}
    fitted = {(r.alignment, r.injection): r.n_train_pairs for r in records if r.source_layer == 2}
    assert fitted[("target", "hybrid")] == fitted[("source", "residual")] < fitted[("target", "residual")]
    assert all(r.classes["lagging"].n_tokens > 0 for r in records if r.alignment == "target")
    splices, scores = two_pass_scores(A, B, TRAIN, texts, records, kind)
    for r, (sp, n_pairs), score in zip(records, splices, scores, strict=True):
        assert r.n_train_pairs == n_pairs
        for mine, theirs in zip(r.adapter.state_dict().values(), sp.adapter.state_dict().values(), strict=True):
            assert torch.equal(mine, theirs)
        for name, c in score.classes.items():
            for key, value in dataclasses.asdict(c).items():
                ours = getattr(r.classes[name], key)
                assert ours == pytest.approx(value, abs=1e-6, nan_ok=True), (r.to_row(), name, key)


def test_the_sweep_runs_a_and_b_over_the_training_texts_once(lagging_pair, texts, monkeypatch):
    """Block 0 of each model counts its forwards until scoring starts: one per training batch (the two-pass
    sweep ran B 3 times per batch here, for the two fit groups and the references, and A twice)."""
    A, B = lagging_pair
    calls, at_scoring = {"A": 0, "B": 0}, {}
    real_score = analyses.sweep.score_splices

    def scoring(*args, **kwargs):
        at_scoring.update(calls)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(analyses.sweep, "score_splices", scoring)
    handles = [model.blocks[0].register_forward_hook(lambda *_, name=name: calls.update({name: calls[name] + 1}))
               for name, model in (("A", A), ("B", B))]
    try:
        layer_sweep(A, B, TRAIN, texts, **MIXED)
    finally:
        for handle in handles:
            handle.remove()
    n_batches = -(-len(TRAIN) // MIXED["batch_size"])
    assert at_scoring == {"A": n_batches, "B": n_batches}
