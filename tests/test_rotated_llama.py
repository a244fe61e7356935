"""Ground truth from a real model: a rotated copy of a tiny Llama computes the same function, and a
Procrustes adapter fitted between the original and the copy recovers the rotation at every layer."""

import copy

import pytest
import torch

import stitch
from stitch.adapters import Procrustes
from stitch.adapters.fit import fit_adapter
from stitch.testing import fold_norm_gains, rotate_residual
from tests.tiny import CORPUS, tiny_model

D_MODEL = 32


@pytest.fixture(scope="module")
def pair(tok):
    original = tiny_model("llama", vocab_size=len(tok), n_layers=3, d_model=D_MODEL, seed=1)
    assert original.lm_head.weight.data_ptr() != original.model.embed_tokens.weight.data_ptr(), "untied"
    with torch.no_grad():  # random gains, so that folding them is not a no-op
        for name, p in original.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    Q = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=torch.Generator().manual_seed(2)))[0]
    rotated = copy.deepcopy(original)
    fold_norm_gains(rotated)
    rotate_residual(rotated, Q)
    A = stitch.load_model(original, tokenizer=tok)
    B = stitch.load_model(rotated, tokenizer=tok)
    return A, B, Q


def test_rotated_copy_computes_the_same_function(pair, texts):
    A, B, Q = pair
    batch = A.encode(texts)
    assert (B.model.model.norm.weight == 1).all() and not (A.model.model.norm.weight == 1).all()
    torch.testing.assert_close(B.logits(batch), A.logits(batch), atol=1e-4, rtol=0)
    layers = list(range(A.n_layers + 1))
    ra, rb = A.residuals(batch, layers), B.residuals(batch, layers)
    real = batch.attention_mask.bool()
    for layer in layers:
        torch.testing.assert_close(rb[layer][real], ra[layer][real] @ Q, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layer", range(4))
def test_procrustes_recovers_the_rotation_and_the_splice_reproduces_the_logits(pair, texts, layer):
    A, B, Q = pair
    ad = fit_adapter(A, B, CORPUS[:6], source_layer=layer, kind="procrustes", progress=False)
    assert isinstance(ad, Procrustes) and ad.weight.dtype == torch.float32
    torch.testing.assert_close(ad.matrix.detach(), Q, atol=1e-4, rtol=0)
    out = stitch.Splice(A, B, source_layer=layer, adapter=ad)(texts)
    batch = A.encode(texts)
    real = batch.attention_mask.bool()
    assert (out.logits - A.logits(batch))[real].abs().max() <= 1e-4
    # and without the adapter the copy does not understand the original: the test can fail
    plain = stitch.Splice(A, B, source_layer=layer)(texts)
    assert (plain.logits - A.logits(batch))[real].abs().max() > 1e-2
