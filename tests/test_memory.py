"""Analysis calls keep no autograd graph and leave requires_grad alone; CKA and fits stream in flat memory."""

import gc
import warnings

import pytest
import torch

import stitch
from analyses.layer_similarity import layer_similarity, splice_cka
from stitch.testing import CORPUS, peak_torch_cpu_bytes
from tests.tiny import byte_bpe_tokenizer, tiny_model


def _live_tensors() -> list:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated module aliases warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


def _graphs_alive() -> list:
    """Every live tensor that is part of an autograd graph (has a grad_fn)."""
    return [t for t in _live_tensors() if t.grad_fn is not None]


@pytest.fixture
def fresh(tok):
    """A model straight from from_config: every weight requires grad, as HF leaves it."""
    lm = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    assert all(p.requires_grad for p in lm.model.parameters())
    return lm


def test_analysis_calls_keep_no_graph(fresh, texts):
    before = len(_graphs_alive())
    earlier = {id(t) for t in _live_tensors() if t.requires_grad}  # other tests' tensors, alive in this session
    batch = fresh.encode(texts)
    results = [
        *fresh.residuals(batch, [1, 3]).values(),
        fresh.logits(batch),
        *fresh.run_with_cache(batch)[1].values(),
        fresh.run_from(fresh.residuals(batch, [1])[1], 1, batch),
    ]
    adapter = stitch.fit_adapter(fresh, fresh, texts, 2, kind="affine", progress=False)
    rec = layer_similarity(fresh, fresh, texts, pairing="shared")
    sim = splice_cka(fresh, fresh, adapter, 2, 2, texts)
    assert not any(r.requires_grad for r in results)
    assert not any(p.requires_grad for p in adapter.parameters()) or adapter.weight.grad is None
    assert not rec.matrix.requires_grad and isinstance(sim.after, float)
    assert len(_graphs_alive()) == before  # no graph over the weights anywhere
    assert all(p.grad is None and p.requires_grad for p in fresh.model.parameters())
    # No tensor anywhere requires grad but the parameters themselves (the model's, as HF left them, and
    # the fitted adapter's): nothing the calls computed or kept does.
    owned = {id(p) for module in (fresh.model, adapter) for p in module.parameters()}
    stray = [
        t for t in _live_tensors()
        if t.requires_grad and id(t) not in owned | earlier and not isinstance(t, torch.nn.Parameter)
    ]
    assert stray == [], [tuple(t.shape) for t in stray]


def test_splice_leaves_flags_alone(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok), seed=1), tokenizer=tok)
    B.model.model.layers[0].requires_grad_(False)  # a mix of flags, as a caller might have left them
    flags = {m: [p.requires_grad for p in m.model.parameters()] for m in (A, B)}
    for options in (dict(), dict(combine="sum", positions="shared"), dict(injection="hybrid")):
        stitch.Splice(A, B, 2, adapter=stitch.adapters.Affine(32), **options)  # built and discarded
        assert {m: [p.requires_grad for p in m.model.parameters()] for m in (A, B)} == flags
    sp = stitch.Splice(A, B, 2, adapter=stitch.adapters.Affine(32))
    sp(texts).loss.backward()
    assert sp.adapter.weight.grad is not None
    del sp
    gc.collect()
    for model, before in flags.items():
        assert [p.requires_grad for p in model.model.parameters()] == before
        assert all(p.grad is None for p in model.model.parameters())  # the graph ran through activations only


def _corpus(n: int) -> list[str]:
    # every batch of 4 holds the same four texts (up to a fixed-width counter), so batches cost the same
    return [f"{CORPUS[i % 4]} ({i:03d})" for i in range(n)]


@pytest.fixture(scope="module")
def two():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), n_layers=2), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok_b), n_layers=2, seed=1), tokenizer=tok_b)
    return A, B


@pytest.mark.parametrize(
    "run",
    [
        lambda A, B, texts: layer_similarity(A, B, texts, pairing="shared", measure="minibatch_cka", batch_size=4),
        lambda A, B, texts: stitch.fit_adapter(A, B, texts, 2, kind="affine", batch_size=4, progress=False),
    ],
    ids=["cka_heatmap", "fit"],
)
def test_peak_memory_is_flat_in_the_number_of_texts(two, run):
    A, B = two
    run(A, B, _corpus(4))  # warm-up: first-call allocations (caches, lazy modules) are not the stream's
    small, _ = peak_torch_cpu_bytes(lambda: run(A, B, _corpus(8)))
    large, _ = peak_torch_cpu_bytes(lambda: run(A, B, _corpus(64)))  # 8x the texts
    assert large <= 1.2 * small, (small, large)


def test_all_samples_measure_grows_with_texts(two):
    """The reference point: a measure that keeps every sample does grow (so the flat result means something)."""
    A, B = two
    run = lambda texts: layer_similarity(A, B, texts, pairing="shared", measure="linear_cka", batch_size=4)  # noqa: E731
    small, _ = peak_torch_cpu_bytes(lambda: run(_corpus(8)))
    large, _ = peak_torch_cpu_bytes(lambda: run(_corpus(64)))
    assert large > 2 * small


def test_minibatch_cka_over_one_batch_is_debiased_cka(two):
    A, B = two
    texts = _corpus(10)
    streamed = layer_similarity(A, B, texts, measure="minibatch_cka", batch_size=10)
    reference = layer_similarity(A, B, texts, measure="debiased_cka", batch_size=3)
    torch.testing.assert_close(streamed.matrix, reference.matrix, rtol=0, atol=1e-6)
    assert streamed.measure == "minibatch_cka" and streamed.n == 10
    with pytest.raises(ValueError, match=r"null_permutations: 5; a permutation null needs every sample"):
        layer_similarity(A, B, texts, measure="minibatch_cka", null_permutations=5)
