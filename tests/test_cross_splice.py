"""The splice across different tokenizers: target grid, source grid, and the identity through alignment."""

import copy

import pytest
import torch

import stitch
from stitch.alignment import align_batch
from stitch.losses import IGNORE, next_token_labels
from tests.tiny import byte_bpe_tokenizer, tiny_model

TEXTS = [
    "Stitching splices the residual stream, café 東京 🙂.",
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Tabs\tand\nnewlines 🚀🚀",
]


@pytest.fixture(scope="module")
def pair():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(600, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), n_layers=3), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("qwen2", vocab_size=len(tok_b), n_layers=4, seed=3), tokenizer=tok_b)
    return A, B


@pytest.mark.parametrize("side", ["right", "left"])
def test_target_grid_uses_b_tokens_positions_and_labels(pair, side):
    A, B = pair
    out = stitch.Splice(A, B, source_layer=2, target_layer=3, padding_side=side)(TEXTS)
    own = B.encode(TEXTS, padding_side=side)
    assert torch.equal(out.target.input_ids, own.input_ids)
    assert torch.equal(out.labels, next_token_labels(own))  # exactly B's own next-token labels
    assert out.logits.shape[:2] == own.input_ids.shape
    assert out.source.input_ids.shape != own.input_ids.shape  # the tokenizations really differ
    assert torch.isfinite(out.loss)


def test_target_grid_feeds_each_b_token_the_aligned_a_state(pair):
    A, B = pair
    sp = stitch.Splice(A, B, source_layer=2, target_layer=3)
    aligned = sp.align(TEXTS)
    states = A.residuals(aligned.source, [2])[2]
    fed = sp.map_states(states, aligned)
    t2s = aligned.target_to_source
    for b in range(len(TEXTS)):
        for j in range(t2s.shape[1]):
            expected = states[b, t2s[b, j]] if t2s[b, j] >= 0 else torch.zeros(A.d_model)
            if aligned.target.attention_mask[b, j]:
                assert torch.equal(fed[b, j], expected)
    # causality: the feeding A token ends at or before the B token (bytes)
    src_end = aligned.source.byte_spans[..., 1].gather(1, t2s.clamp(min=0))
    real = (t2s >= 0) & aligned.target.attention_mask.bool()
    assert (src_end[real] <= aligned.target.byte_spans[..., 1][real]).all()
    logits = B.run_from(fed, 3, aligned.target)
    torch.testing.assert_close(sp(TEXTS).logits, logits)


def test_source_grid_runs_b_on_a_positions_with_source_labels(pair):
    A, B = pair
    out = stitch.Splice(A, B, source_layer=2, target_layer=3, alignment="source")(TEXTS)
    a_batch = A.encode(TEXTS)
    assert out.logits.shape[:2] == a_batch.input_ids.shape
    expected = align_batch(a_batch, B.encode(TEXTS)).source_labels
    assert torch.equal(out.labels, expected)
    assert (out.labels != IGNORE).any() and (out.labels == IGNORE).any()


@pytest.mark.parametrize("alignment", ["target", "source"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_self_stitch_identity_through_the_alignment_path(tok, alignment, side):
    hf = tiny_model("llama", vocab_size=len(tok))
    A = stitch.load_model(hf, tokenizer=tok)
    A2 = stitch.load_model(hf, tokenizer=copy.deepcopy(tok))  # a separately held copy: alignment path
    batch = A.encode(TEXTS, padding_side=side)
    native = A.logits(batch)
    for layer in range(A.n_layers + 1):
        sp = stitch.Splice(A, A2, source_layer=layer, alignment=alignment, padding_side=side)
        aligned = sp.align(TEXTS)
        assert aligned.target_to_source is not None
        out = sp(TEXTS)
        real = batch.attention_mask.bool()
        assert (out.logits - native)[real].abs().max() <= 1e-5
        assert torch.equal(out.labels, next_token_labels(batch))
