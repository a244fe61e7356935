"""Fitting adapters from models: which positions are paired, streamed statistics, options and errors."""

import pytest
import torch

import stitch
from stitch.adapters import Affine, SufficientStats
from stitch.adapters.fit import (
    EMBEDDINGS,
    collect_grouped_stats,
    collect_stats,
    fit_adapter,
    paired_positions,
)
from stitch.splice import align_texts
from tests.tiny import CORPUS, byte_bpe_tokenizer, tiny_model

TRAIN = CORPUS[:5]


@pytest.fixture(scope="module")
def models(tok):
    tok_b = byte_bpe_tokenizer(vocab_size=1200)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=7), tokenizer=tok)
    B = stitch.load_model(tiny_model("gpt2", vocab_size=len(tok_b), d_model=48, seed=8), tokenizer=tok_b)
    return A, B


def test_shared_tokenizer_pairs_every_real_non_special_position(llama, texts):
    stats = collect_stats(llama, llama, texts, [(1, 2)], batch_size=3, progress=False)[(1, 2)]
    n_tokens = sum(len(llama.tokenizer(t)["input_ids"]) - 1 for t in texts)  # all but BOS
    assert stats.n == n_tokens
    reference = SufficientStats()
    for text in texts:  # one text at a time, no padding: an independent path to the same statistics
        batch = llama.encode([text])
        res = llama.residuals(batch, [1, 2])
        reference.update(res[1][0, 1:], res[2][0, 1:])
    torch.testing.assert_close(stats.mean_x, reference.mean_x)
    torch.testing.assert_close(stats.cxy, reference.cxy)
    with_bos = collect_stats(llama, llama, texts, (1, 2), drop_special=False, progress=False)[(1, 2)]
    assert with_bos.n == n_tokens + len(texts)


def test_cross_tokenizer_pairs_follow_the_target_grid(models, texts):
    A, B = models
    aligned = align_texts(A, B, texts)
    t2s = aligned.target_to_source
    rows, src, tgt = paired_positions(aligned)
    assert torch.equal(src, t2s[rows, tgt])
    assert (aligned.source.spans[rows, src, 1] <= aligned.target.spans[rows, tgt, 1]).all()  # causal
    expected = 0
    for b in range(len(texts)):  # the definition, position by position
        for j in range(aligned.target.shape[1]):
            i = int(t2s[b, j])
            expected += (
                bool(aligned.target.attention_mask[b, j])
                and i >= 0
                and not (aligned.target.special_mask[b, j] or aligned.source.special_mask[b, i])
            )
    assert rows.numel() == expected > 0
    assert paired_positions(aligned, drop_special=False)[0].numel() > expected


def test_fit_adapter_equals_fit_on_collected_pairs(models):
    A, B = models
    ad = fit_adapter(A, B, TRAIN, 2, 1, kind="affine", ridge=0.1, batch_size=2, progress=False)
    assert isinstance(ad, Affine) and (ad.d_source, ad.d_target) == (32, 48)
    xs, ys = [], []
    for text in TRAIN:
        aligned = align_texts(A, B, [text])
        rows, src, tgt = paired_positions(aligned)
        xs.append(A.residuals(aligned.source, [2])[2][rows, src])
        ys.append(B.residuals(aligned.target, [1])[1][rows, tgt])
    ref = Affine.fit(torch.cat(xs).double(), torch.cat(ys).double(), ridge=0.1)
    torch.testing.assert_close(ad.weight.double(), ref.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ad.bias.double(), ref.bias, atol=1e-5, rtol=1e-5)


def test_embedding_targets_and_one_pass_for_many_pairs(models):
    A, B = models
    stats = collect_stats(A, B, TRAIN, [(0, EMBEDDINGS), (3, 3), (0, EMBEDDINGS)], progress=False)
    assert list(stats) == [(0, EMBEDDINGS), (3, 3)]
    ids = []
    for text in TRAIN:
        aligned = align_texts(A, B, [text])
        rows, _, tgt = paired_positions(aligned)
        ids.append(aligned.target.input_ids[rows, tgt])
    mean = B.model.get_input_embeddings().weight[torch.cat(ids)].double().mean(0)
    torch.testing.assert_close(stats[0, EMBEDDINGS].mean_y, mean)
    assert stats[0, EMBEDDINGS].n == stats[3, 3].n == len(torch.cat(ids))


def test_bf16_models_give_float32_adapters_and_a_progress_bar(tok, capsys):
    model = stitch.load_model(
        tiny_model("llama", vocab_size=len(tok), seed=9).to(torch.bfloat16), tokenizer=tok
    )
    ad = fit_adapter(model, model, TRAIN, 2, kind="procrustes")
    assert ad.weight.dtype == torch.float32
    assert "pairing states" in capsys.readouterr().err


def test_bad_requests_fail_before_any_model_runs(llama, texts):
    with pytest.raises(ValueError, match="no closed-form fit"):
        fit_adapter(llama, llama, texts, 1, kind="lowrank")
    with pytest.raises(TypeError, match=r"\['ridge'\].*valid options: \['scale', 'translation'\]"):
        fit_adapter(llama, llama, texts, 1, kind="procrustes", ridge=1.0)
    with pytest.raises(ValueError, match="source layer"):
        collect_stats(llama, llama, texts, [(9, 1)], progress=False)
    with pytest.raises(ValueError, match="layer_pairs"):
        collect_stats(llama, llama, texts, [], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        collect_stats(llama, llama, texts, [(1, 1)], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="texts"):
        fit_adapter(llama, llama, [], 1)


def test_grouped_stats_equal_one_collect_stats_per_group_in_one_pass(models):
    """Each group keeps its own classes of pairs, exactly as its own collect_stats would, from one pass."""
    B, A = models  # A's 1200-token vocabulary cuts longer tokens than B's: lagging positions occur
    groups = {None: [(1, 1)], ("shared",): [(1, 1), (2, EMBEDDINGS)]}
    calls = []
    handle = B.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        grouped = collect_grouped_stats(A, B, TRAIN, groups, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 3  # three batches of texts, once (two collect_stats calls would run B six times)
    for classes, pairs in groups.items():
        alone = collect_stats(A, B, TRAIN, pairs, batch_size=2, progress=False, classes=classes)
        for pair in pairs:
            mine, theirs = grouped[classes][pair], alone[pair]
            assert mine.n == theirs.n and all(
                torch.equal(getattr(mine, k), getattr(theirs, k)) for k in ("mean_x", "mean_y", "cxx", "cxy", "syy"))
    assert grouped[("shared",)][1, 1].n < grouped[None][1, 1].n
    with pytest.raises(ValueError, match="^groups: expected a non-empty"):
        collect_grouped_stats(A, B, TRAIN, {}, progress=False)
