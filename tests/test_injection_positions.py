"""Position-selective splices and the hybrid injection: identity, raw-hook references, blocks run."""

import copy

import pytest
import torch

import stitch
from stitch.splice.positions import Positions
from tests.test_model import count_block_calls
from tests.tiny import byte_bpe_tokenizer, tiny_model

SELECTIONS = ["shared", "last", [0, -1], "1,2"]


def twin(model):
    """The same model behind a distinct tokenizer object: the splice then pairs two tokenizations for real."""
    return stitch.load_model(model.model, tokenizer=copy.deepcopy(model.tokenizer))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("positions", SELECTIONS)
def test_position_selective_self_stitch_is_identity_at_every_layer(tok, texts, side, positions):
    A = stitch.load_model(tiny_model("gemma2", vocab_size=len(tok)), tokenizer=tok)
    native = A.logits(A.encode(texts, padding_side=side))
    for B in (A, twin(A)):
        for layer in range(A.n_layers + 1):
            out = stitch.Splice(A, B, layer, padding_side=side, positions=positions)(texts)
            real = out.target.attention_mask.bool()
            assert (out.logits - native)[real].abs().max() <= 1e-5, (positions, layer)


@pytest.mark.parametrize("family", ["llama", "gemma", "gpt2"])
def test_hybrid_of_b_into_itself_equals_b_at_every_layer(tok, texts, family):
    B = stitch.load_model(tiny_model(family, vocab_size=len(tok), seed=3), tokenizer=tok)
    native = B.logits(B.encode(texts))
    for layer in range(B.n_layers + 1):
        for positions in (None, "last", "all"):
            out = stitch.Splice(B, B, layer, injection="hybrid", positions=positions)(texts)
            real = out.target.attention_mask.bool()
            assert (out.logits - native)[real].abs().max() <= 1e-5, (layer, positions)


def test_selected_positions_match_a_raw_torch_hook(tok, texts):
    """A's mapped states written at the selected positions of B's layer-M input, by a plain HF pre-hook."""
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=1), tokenizer=tok)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok), seed=2), tokenizer=tok)
    for injection, positions in (("residual", [0, -1]), ("residual", "last"), ("hybrid", "1")):
        sp = stitch.Splice(A, B, 2, 1, injection=injection, positions=positions)
        out = sp(texts)
        batch = out.target
        mask = Positions.parse(positions).mask(sp.align(texts))
        mapped = A.residuals(batch, [2])[2]

        def replace(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = torch.where(mask.unsqueeze(-1), mapped, hidden)
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        handle = B.model.model.layers[1].register_forward_pre_hook(replace, with_kwargs=True)
        try:
            ref = B.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids).logits
        finally:
            handle.remove()
        real = batch.attention_mask.bool()
        assert (out.logits - ref)[real].abs().max() <= 1e-5, (injection, positions)
        assert (out.logits - B.logits(batch))[real].abs().max() > 1e-3  # A's states did change B


def test_token_indices_count_real_tokens_whatever_the_padding(llama, texts):
    right, left = (llama.encode(texts, padding_side=side) for side in ("right", "left"))
    for batch in (right, left):
        pairing = stitch.alignment.pairing.Pairing(batch, batch, None)
        mask = Positions.parse([0, -1]).mask(pairing)
        for row in range(len(texts)):
            cols = mask[row].nonzero().flatten().tolist()
            real = batch.attention_mask[row].nonzero().flatten().tolist()
            assert cols == sorted({real[0], real[-1]})


def test_blocks_run_counts_what_computes(tok, texts):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), n_layers=4), tokenizer=tok)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok), n_layers=5, seed=1), tokenizer=tok)
    cases = [("residual", "all", [0, 0, 1, 1, 1]), ("residual", "shared", [1] * 5), ("residual", "last", [1] * 5),
             ("hybrid", None, [1] * 5), ("hybrid", "all", [1] * 5)]
    for injection, positions, expected in cases:
        sp = stitch.Splice(A, B, 3, 2, injection=injection, positions=positions)
        with count_block_calls(A) as calls_a, count_block_calls(B) as calls_b:
            sp(texts)
        assert calls_a.counts == [1, 1, 1, 0], (injection, positions)
        assert calls_b.counts == expected, (injection, positions)
        first = expected.index(1)
        assert sp.blocks_run == {"A": (0, 3), "B": (first, 5)}


def test_hybrid_and_selections_say_what_they_answer(llama):
    hybrid = stitch.Splice(llama, llama, 1, injection="hybrid")
    assert hybrid.positions.label == "shared" and "different question" in hybrid.answers
    assert "different question" not in stitch.Splice(llama, llama, 1).answers
    assert stitch.Splice(llama, llama, 1, positions=[0, -1]).positions.label == "indices 0,-1"


def test_bad_positions_are_named_errors(llama, texts):
    with pytest.raises(ValueError, match="positions: got 'middle'"):
        stitch.Splice(llama, llama, 1, positions="middle")
    with pytest.raises(ValueError, match="positions: a mask must be a bool tensor"):
        stitch.Splice(llama, llama, 1, positions=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="alignment: 'source'"):
        stitch.Splice(llama, llama, 1, alignment="source", injection="hybrid")
    sp = stitch.Splice(llama, llama, 1, positions=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"positions: mask of shape \(1, 2\)"):
        sp(texts)
    with pytest.raises(ValueError, match="combine: .max."):
        stitch.Splice(llama, llama, 1, combine="max")


def test_a_user_mask_writes_exactly_there(tok):
    B = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=5), tokenizer=tok)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=6), tokenizer=tok)
    text = ["The quick brown fox jumps"]
    n = B.encode(text).shape[1]
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, 3] = True
    out = stitch.Splice(A, B, 2, positions=mask)(text)
    native = B.logits(text)
    torch.testing.assert_close(out.logits[0, :3], native[0, :3], rtol=0, atol=1e-5)  # causal: before 3 unchanged
    assert (out.logits[0, 3:] - native[0, 3:]).abs().max() > 1e-3


def test_cross_tokenizer_hybrid_keeps_b_at_positions_it_does_not_write():
    tok_a, tok_b = byte_bpe_tokenizer(1200, bos=False), byte_bpe_tokenizer(300)
    A = stitch.load_model(tiny_model("llama", len(tok_a), seed=1), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("qwen2", len(tok_b), d_model=48, seed=2), tokenizer=tok_b)
    text = ["The quick brown fox jumps over the lazy dog."]
    sp = stitch.Splice(A, B, 2, adapter=stitch.adapters.Projection(A.d_model, B.d_model), injection="hybrid")
    pairing = sp.align(text)
    shared = pairing.class_mask("shared")[0]
    first = int(shared.nonzero()[0])  # B positions before the first shared one see only B's own states
    out = sp(text)
    torch.testing.assert_close(out.logits[0, :first], B.logits(text)[0, :first], rtol=0, atol=1e-5)
    assert (out.logits[0, first:] - B.logits(text)[0, first:]).abs().max() > 1e-3
