"""Models on different devices: each state crosses once, to B's side, in the adapter's dtype; Splice.to."""

import logging

import pytest
import torch

import stitch
from stitch.models.placement import record_moves
from tests.tiny import byte_bpe_tokenizer, tiny_model


@pytest.fixture(scope="module")
def pair():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), n_layers=4), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("qwen2", vocab_size=len(tok_b), d_model=48, seed=1), tokenizer=tok_b)
    return A, B


@pytest.mark.parametrize("injection, target_layer", [("residual", 2), ("inputs_embeds", None)])
def test_each_state_crosses_once_to_b_side(pair, texts, injection, target_layer):
    A, B = pair
    adapter = stitch.adapters.Affine(32, 48).to(torch.float64)
    sp = stitch.Splice(A, B, 3, target_layer, adapter=adapter, injection=injection)
    with record_moves() as moves:
        out = sp(texts)
    [move] = moves
    assert move.shape == (*out.source.shape, A.d_model)  # A's layer-3 states, and nothing else of A
    assert move.device == sp.write_device == (B.device_of(2) if target_layer else B.device)
    assert (move.source_dtype, move.dtype) == (torch.float32, torch.float64)

    with record_moves() as moves:
        sp(texts, batch_size=3)  # one move per batch
    assert [m.shape[0] for m in moves] == [3, 1]


def test_batched_call_equals_one_call(pair, texts):
    A, B = pair
    sp = stitch.Splice(A, B, 2, 1, adapter=stitch.adapters.Affine(32, 48))
    whole, parts = sp(texts), sp(texts, batch_size=2)
    real = whole.target.attention_mask.bool()
    assert parts.logits.shape == whole.logits.shape
    torch.testing.assert_close(parts.logits[real], whole.logits[real], rtol=0, atol=1e-5)
    assert torch.equal(parts.labels, whole.labels)
    torch.testing.assert_close(parts.loss, whole.loss)
    assert parts.target.texts == texts
    with pytest.raises(ValueError, match=r"batch_size: expected an integer >= 1, got 0"):
        sp(texts, batch_size=0)


def test_adapter_moves_to_b_side_and_to_moves_everything(pair, caplog, tok):
    A, B = pair
    adapter = stitch.adapters.Affine(32, 48)
    sp = stitch.Splice(A, B, 2, adapter=adapter)
    assert next(adapter.parameters()).device == B.device_of(2)
    with caplog.at_level(logging.INFO, logger="stitch.splice"):
        assert sp.to("cpu", torch.float64) is sp
    assert "A (cpu → cpu), B (cpu → cpu), adapter (dtype torch.float64)" in caplog.text
    assert adapter.weight.dtype is torch.float64 and A.dtype is torch.float32  # a dtype casts the adapter only

    hf = tiny_model("llama", vocab_size=len(tok))
    hf.lm_head.to("meta")  # two devices: stands in for a model sharded with device_map
    sharded = stitch.HookedLM(hf, tok)
    with pytest.raises(ValueError, match=r"device: model B .* is sharded over \['cpu', 'meta'\] by device_map"):
        stitch.Splice(A, sharded, 1, adapter=stitch.adapters.Affine(32)).to("cpu")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_give_the_one_gpu_logits(texts):
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a)), tokenizer=tok_a, device="cuda:0")
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok_b), seed=1), tokenizer=tok_b, device="cuda:0")
    adapter = stitch.adapters.Affine(32)
    one = stitch.Splice(A, B, 2, 1, adapter=adapter)(texts).logits
    B.model.to("cuda:1")
    sp = stitch.Splice(A, B, 2, 1, adapter=adapter)
    assert next(adapter.parameters()).device == torch.device("cuda:1")
    with record_moves() as moves:
        two = sp(texts)
    assert [m.device for m in moves] == [torch.device("cuda:1")]
    torch.testing.assert_close(two.logits.cpu(), one.cpu(), rtol=0, atol=1e-5)


def test_generate_in_batches_equals_one_batch(pair):
    A, B = pair
    sp = stitch.Splice(A, B, 2, 1, adapter=stitch.adapters.Affine(32, 48))
    prompts = ["The quick brown", "Stitching splices", "Numbers like 3.14"]
    whole = sp.generate(prompts, max_new_tokens=4, return_ids=True)
    parts = sp.generate(prompts, max_new_tokens=4, return_ids=True, batch_size=2)
    assert parts.texts == whole.texts and parts.token_ids == whole.token_ids
    with pytest.raises(ValueError, match=r"batch_size: 2 splits 3 prompts into batches, but output_scores"):
        sp.generate(prompts, max_new_tokens=2, output_scores=True, batch_size=2)


def test_communicate_moves_only_a_picked_states_once_to_b_side(pair):
    """Activation communication: A's states at the source positions cross once, in the adapter's dtype, to
    B's device at layer j; the adapter is moved there; the cached and from-scratch runs agree."""
    A, B = pair
    adapter = stitch.adapters.Affine(32, 48).to(torch.float64)
    prompts_a, prompts_b = ["Alice was born in Paris.", "Five red balls"], ["Where?", "How many balls are there?"]
    kw = dict(positions=[0, -1], source_positions=[-1, -2], max_new_tokens=3, stop_at_eos=False, return_ids=True)
    with record_moves() as moves:
        out = stitch.communicate(A, B, prompts_a, prompts_b, 3, 2, adapter=adapter, **kw)
    [move] = moves  # the prompt pass only: generated tokens are B's own
    assert move.shape == (2, 2, A.d_model)  # two rows × the two picked positions, nothing else of A
    assert move.device == B.device_of(2) and (move.source_dtype, move.dtype) == (torch.float32, torch.float64)
    assert next(adapter.parameters()).device == B.device_of(2)
    with record_moves() as moves:
        reference = stitch.communicate(A, B, prompts_a, prompts_b, 3, 2, adapter=adapter, use_cache=False, **kw)
    assert reference.token_ids == out.token_ids and len(moves) == 3  # one prompt pass per from-scratch step
