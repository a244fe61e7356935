"""Generation under injection: self-stitch equals B's own greedy decoding; the policies differ where they should."""

import copy

import pytest
import torch

import stitch
from tests.tiny import byte_bpe_tokenizer, tiny_model

PROMPTS = ["The quick brown fox", "Stitching splices"]


def native_greedy(model, prompt: str, n: int) -> str:
    """Reference: B alone, greedy, re-encoding the text every step as the splice does."""
    continuation = []
    for _ in range(n):
        text = prompt + model.tokenizer.decode(continuation, skip_special_tokens=True)
        continuation.append(int(model.logits([text])[0, -1].argmax()))
    return model.tokenizer.decode(continuation, skip_special_tokens=True)


@pytest.mark.parametrize("policy", ["all", "prompt"])
def test_self_stitch_generation_equals_native_greedy(llama, policy):
    for layer in (0, 2, llama.n_layers):
        out = stitch.Splice(llama, llama, source_layer=layer).generate(
            PROMPTS, max_new_tokens=5, policy=policy, stop_at_eos=False
        )
        assert out == [native_greedy(llama, p, 5) for p in PROMPTS]


def test_first_token_matches_hf_generate(llama):
    out = stitch.Splice(llama, llama, source_layer=1).generate(
        PROMPTS[:1], max_new_tokens=1, stop_at_eos=False
    )
    ids = llama.encode(PROMPTS[:1]).input_ids
    hf = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    assert out[0] == llama.tokenizer.decode(hf[0, -1:])


def test_policies_differ_across_models():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(600, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), seed=5), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok_b), seed=6), tokenizer=tok_b)
    sp = stitch.Splice(A, B, source_layer=2)
    both = [sp.generate(PROMPTS, max_new_tokens=6, policy=p, stop_at_eos=False) for p in ("all", "prompt")]
    assert all(isinstance(t, str) for t in both[0] + both[1])
    assert both[0] != both[1]


def test_bad_generation_arguments(llama):
    sp = stitch.Splice(llama, llama, source_layer=1)
    with pytest.raises(ValueError, match=r"policy: 'everything' is not one of \['all', 'prompt'\]"):
        sp.generate(PROMPTS, policy="everything")
    with pytest.raises(ValueError, match=r"max_new_tokens: expected an integer >= 1, got 0"):
        sp.generate(PROMPTS, max_new_tokens=0)


@pytest.mark.parametrize("policy", ["all", "prompt"])
def test_generation_follows_the_inputs_embeds_baseline(tok, policy):
    # A is B with its position embeddings zeroed: A's layer-0 states are B's raw input embeddings, so the
    # inputs_embeds splice is exactly B (GPT-2 adds positions to inputs_embeds, unlike a layer-0 splice).
    hf = tiny_model("gpt2", vocab_size=len(tok), seed=3)
    hf.transformer.wpe.weight.data.mul_(100)  # positions that matter, so ignoring them shows
    B = stitch.load_model(hf, tokenizer=tok)
    no_positions = copy.deepcopy(hf)
    no_positions.transformer.wpe.weight.data.zero_()
    A = stitch.load_model(no_positions, tokenizer=tok)
    sp = stitch.Splice(A, B, source_layer=0, injection="inputs_embeds")
    out = sp.generate(PROMPTS, max_new_tokens=4, policy=policy, stop_at_eos=False)
    assert out == [native_greedy(B, p, 4) for p in PROMPTS]
