"""The splice: self-stitch identity, work skipped, gradients, the embedding-injection baseline."""


import pytest
import torch
from torch import nn

import stitch
from stitch.losses import mean_cross_entropy, next_token_labels
from tests.test_hooks import hooks_left
from tests.test_model import count_block_calls
from tests.tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_self_stitch_identity_at_every_layer(family, side, tok, texts):
    A = stitch.load_model(tiny_model(family, vocab_size=len(tok)), tokenizer=tok)
    batch = A.encode(texts, padding_side=side)
    native = A.logits(batch)
    real = batch.attention_mask.bool()
    for layer in range(A.n_layers + 1):
        out = stitch.Splice(A, A, source_layer=layer, padding_side=side)(texts)
        assert (out.logits - native)[real].abs().max() <= 1e-5, (family, side, layer)
        torch.testing.assert_close(out.loss, mean_cross_entropy(native, next_token_labels(batch)))


def test_splice_runs_exactly_the_blocks_it_needs(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), n_layers=4), tokenizer=tok)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok), n_layers=5, seed=1), tokenizer=tok)
    for n, m in [(0, 0), (1, 3), (3, 1), (4, 5), (2, 2)]:
        with count_block_calls(A) as calls_a, count_block_calls(B) as calls_b:
            stitch.Splice(A, B, source_layer=n, target_layer=m)(texts)
        assert calls_a.counts == [1] * n + [0] * (4 - n)
        assert calls_b.counts == [0] * m + [1] * (5 - m)


def test_only_the_adapter_trains(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), d_model=32), tokenizer=tok)
    B = stitch.load_model(tiny_model("qwen2", vocab_size=len(tok), d_model=48, seed=1), tokenizer=tok)
    adapter = nn.Linear(32, 48)
    sp = stitch.Splice(A, B, source_layer=2, target_layer=1, adapter=adapter)
    assert [n for n, _ in sp.named_parameters()] == ["adapter.weight", "adapter.bias"]
    sp.train()
    out = sp(texts)
    out.loss.backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    for model in (A, B):
        assert not model.model.training
        # no weight gradient is computed, and the caller's requires_grad flags are left as they were
        assert all(p.grad is None and p.requires_grad for p in model.model.parameters())
    assert set(sp.state_dict()) == {"adapter.weight", "adapter.bias"}


def test_labels_are_b_next_tokens(llama, texts):
    out = stitch.Splice(llama, llama, source_layer=1)(texts)
    ids, mask = out.target.input_ids, out.target.attention_mask
    for row in range(len(texts)):
        n = int(mask[row].sum())
        assert out.labels[row, : n - 1].tolist() == ids[row, 1:n].tolist()
        assert (out.labels[row, n - 1 :] == -100).all()


def test_embedding_injection_baseline_equals_target_layer_0(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok), seed=2), tokenizer=tok)
    embeds = stitch.Splice(A, B, source_layer=2, injection="inputs_embeds")(texts)
    layer0 = stitch.Splice(A, B, source_layer=2, target_layer=0)(texts)
    real = embeds.target.attention_mask.bool()
    assert (embeds.logits - layer0.logits)[real].abs().max() <= 1e-5
    torch.testing.assert_close(embeds.loss, layer0.loss)


def test_faults_leave_no_hooks_on_either_model(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    B = stitch.load_model(tiny_model("gemma", vocab_size=len(tok), seed=4), tokenizer=tok)
    before = stitch.Splice(A, B, source_layer=2)(texts).logits
    n_hooks = hooks_left(A), hooks_left(B)

    class Broken(nn.Module):
        d_source = d_target = A.d_model

        def forward(self, x):
            raise FloatingPointError("adapter exploded")

    with pytest.raises(FloatingPointError):
        stitch.Splice(A, B, source_layer=2, adapter=Broken())(texts)
    with pytest.raises(
        ValueError, match="hook blocks.1.hook_resid_pre"
    ):  # B's own hook misbehaves mid-forward
        with B.hooks([("blocks.1.hook_resid_pre", lambda resid, hook: resid[:, :1])]):
            stitch.Splice(A, B, source_layer=1)(texts)
    assert (hooks_left(A), hooks_left(B)) == n_hooks
    assert torch.equal(stitch.Splice(A, B, source_layer=2)(texts).logits, before)


