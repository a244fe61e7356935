"""A run's representation probes come from one pass of A and B: `PairProbe.collect_all` over three layer pairs
gives exactly the tensors and before-numbers of a store per pair (the old path, rebuilt here by hand), runs
A's and B's block 0 once where the per-pair path ran them three times, and the training loop uses it."""

import pytest
import torch

import stitch
import stitch.training.probes as probes_mod
from analyses.cka import linear_cka
from stitch.activations import collect_activations
from stitch.testing import CORPUS, byte_bpe_tokenizer, rotated_copy, tiny_model
from stitch.training.config import TrainConfig
from stitch.training.loop import train
from stitch.training.probes import PairProbe

TEXTS = list(dict.fromkeys(CORPUS))[:4]
PAIRS = [(1, 1), (2, 2), (3, 2)]  # two share B's layer 2


@pytest.fixture(scope="module")
def models():
    tok = byte_bpe_tokenizer()
    hf = tiny_model("llama", vocab_size=len(tok), seed=3)
    return stitch.load_model(hf, tokenizer=tok), stitch.load_model(rotated_copy(hf, seed=4)[0], tokenizer=tok)


def per_pair_reference(A, B, n, m, limit):
    """The pre-`collect_all` path: a store of just (n, m), its pairs cut to `limit`, the before-numbers by hand."""
    x, y = collect_activations(A, B, TEXTS, [n], [m]).paired(n, m)
    x, y = x[:limit].float(), y[:limit].float()
    cosine = float(torch.nn.functional.cosine_similarity(x, y, dim=-1).mean())
    return x, y, {"cosine_before": cosine, "cka_before": float(linear_cka(x.double(), y.double()))}


@pytest.mark.parametrize("limit", [2048, 7])
def test_collect_all_equals_one_store_per_pair_exactly(models, limit):
    A, B = models
    probes = PairProbe.collect_all(A, B, TEXTS, PAIRS, limit=limit, cka=linear_cka)
    assert len(probes) == len(PAIRS)
    for probe, (n, m) in zip(probes, PAIRS, strict=True):
        x, y, before = per_pair_reference(A, B, n, m, limit)
        assert torch.equal(probe.x, x) and torch.equal(probe.y, y)
        assert probe.before == before
    kept = probes[0].x.shape[0]
    assert kept == 7 if limit == 7 else 7 < kept < 2048  # the cut bites at 7, not at 2048
    single = PairProbe.collect(A, B, TEXTS, 3, 2, limit=limit, cka=linear_cka)
    assert torch.equal(single.x, probes[2].x) and single.before == probes[2].before


def block0_calls(A, B, run):
    calls = {"A": 0, "B": 0}
    handles = [
        model.blocks[0].register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
        for k, model in (("A", A), ("B", B))
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_collect_all_runs_each_model_once_where_per_pair_ran_three_times(models):
    A, B = models  # four texts: one batch, so one pass is one call of block 0
    old = block0_calls(A, B, lambda: [per_pair_reference(A, B, n, m, 2048) for n, m in PAIRS])
    new = block0_calls(A, B, lambda: PairProbe.collect_all(A, B, TEXTS, PAIRS, cka=linear_cka))
    assert old == {"A": 3, "B": 3}
    assert new == {"A": 1, "B": 1}


def test_the_loop_collects_every_pairs_probe_in_one_store(models, tmp_path, monkeypatch):
    A, B = models
    seen = []

    def counting(A_, B_, texts, sources, targets, **options):
        seen.append((sorted(set(sources)), sorted(set(targets))))
        return collect_activations(A_, B_, texts, sources, targets, **options)

    monkeypatch.setattr(probes_mod, "collect_activations", counting)
    config = TrainConfig(out=str(tmp_path), layer_pairs=tuple(f"{n}:{m}" for n, m in PAIRS), kind="affine",
                         batch_size=2, steps=1, eval_every=1, progress=False)  # fmt: skip
    result = train(A, B, TEXTS, config, eval_texts=TEXTS, similarity=linear_cka)
    assert seen == [([1, 2, 3], [1, 2])]
    first = {r["pair"]: r for r in result.history if r["split"] == "eval" and r["step"] == 0}
    for n, m in PAIRS:
        _, _, before = per_pair_reference(A, B, n, m, 2048)
        assert {k: first[f"{n}:{m}"][k] for k in before} == before
