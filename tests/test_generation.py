"""Generation under injection: self-splice equals HF `generate`, cached equals the re-encoding reference."""

import copy

import pytest
import torch
from transformers import TextStreamer

import analyses
import stitch
from analyses.report import Section, render_report
from tests.tiny import byte_bpe_tokenizer, tiny_model
from tests.tokenizers_util import sentencepiece_unigram

PROMPTS = ["The quick brown fox", "Hi", "café 東京 🙂 naïve"]  # left padding, multi-byte characters
POLICIES = ["prompt", "restitch"]


def hf_greedy(model, prompts, n: int) -> list[list[int]]:
    """Reference: HF `generate` on the model alone, greedy, left-padded batch, no early stop."""
    batch = model.encode(prompts, padding_side="left")
    out = model.model.generate(
        batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=n, do_sample=False,
        pad_token_id=model.pad_token_id, eos_token_id=None,
    )
    return out[:, batch.shape[1] :].tolist()


def linear(a, b, seed: int = 0) -> torch.nn.Linear:
    """A fixed random adapter between two models' widths."""
    torch.manual_seed(seed)
    return torch.nn.Linear(a.d_model, b.d_model).requires_grad_(False)


@pytest.fixture(scope="module")
def spm():
    return sentencepiece_unigram(512)  # Metaspace pre-tokenizer, `<0xNN>` byte fallback


@pytest.fixture(scope="module")
def cross(spm):
    tok_a = byte_bpe_tokenizer(300)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), seed=1), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("gpt2", vocab_size=len(spm), seed=2), tokenizer=spm)
    return A, B


@pytest.mark.parametrize(
    "family,tokenizer", [("llama", "bpe"), ("gpt2", "bpe"), ("gemma2", "bpe"), ("llama", "spm")]
)
def test_self_splice_generates_hf_greedy_tokens_at_every_layer(family, tokenizer, tok, spm):
    # gemma2's sliding window (4) is shorter than the texts: the cache's mask must apply it too.
    t = tok if tokenizer == "bpe" else spm
    M = stitch.load_model(tiny_model(family, vocab_size=len(t), seed=3), tokenizer=t)
    expected = hf_greedy(M, PROMPTS, 8)
    for layer in range(M.n_layers + 1):
        sp = stitch.Splice(M, M, source_layer=layer)
        for policy in POLICIES:
            out = sp.generate(PROMPTS, 8, policy, stop_at_eos=False, return_ids=True)
            assert out.token_ids == expected, (layer, policy)


def test_spm_text_keeps_spaces_and_multibyte_characters(spm):
    # Decoding `[▁of, ▁the]` alone drops the space; the text is read from the surfaces of all the ids.
    M = stitch.load_model(tiny_model("llama", vocab_size=len(spm), seed=3), tokenizer=spm)
    out = stitch.Splice(M, M, 1).generate(PROMPTS, 12, stop_at_eos=False, return_ids=True)
    for prompt, prompt_ids, ids, text in zip(PROMPTS, out.prompt_ids, out.token_ids, out.texts, strict=True):
        full = spm.decode(prompt_ids + ids, skip_special_tokens=True)
        assert full.startswith(prompt)
        if "\ufffd" not in full:
            assert text == full[len(prompt) :]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_cached_equals_reencoding_reference_across_tokenizers(cross, policy, layer):
    A, B = cross
    for a, b in ((A, B), (B, A)):
        sp = stitch.Splice(a, b, layer, adapter=linear(a, b))
        cached = sp.generate(PROMPTS, 16, policy, stop_at_eos=False, return_ids=True)
        reference = sp.generate(PROMPTS, 16, policy, stop_at_eos=False, return_ids=True, use_cache=False)
        assert cached.token_ids == reference.token_ids
        assert cached.texts == reference.texts


@pytest.mark.parametrize("policy", POLICIES)
def test_cached_equals_reference_when_sampling_with_a_seed(cross, policy):
    A, B = cross
    sp = stitch.Splice(A, B, 2, adapter=linear(A, B))
    controls = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=7, stop_at_eos=False, return_ids=True)
    cached = sp.generate(PROMPTS, 12, policy, **controls)
    reference = sp.generate(PROMPTS, 12, policy, use_cache=False, **controls)
    assert cached.token_ids == reference.token_ids
    again = sp.generate(PROMPTS, 12, policy, **controls)
    assert again.token_ids == cached.token_ids
    other = sp.generate(PROMPTS, 12, policy, **{**controls, "seed": 8})
    assert other.token_ids != cached.token_ids
    greedy = sp.generate(PROMPTS, 12, policy, stop_at_eos=False, return_ids=True)
    assert greedy.token_ids != cached.token_ids


def _count_block_tokens(model):
    """Tokens that went through a block that computes (skipped blocks never call their attention)."""
    counter = {"calls": 0, "tokens": 0}

    def hook(module, args, kwargs):
        counter["calls"] += 1
        counter["tokens"] += (args[0] if args else kwargs["hidden_states"]).shape[:2].numel()

    handles = [block.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for block in model.blocks]
    return counter, handles


@pytest.mark.parametrize("policy", POLICIES)
def test_forward_work_is_linear_in_new_tokens(cross, llama, policy):
    A, B = cross
    llama_b = stitch.load_model(tiny_model("llama", vocab_size=len(B.tokenizer), seed=4), tokenizer=B.tokenizer)
    for a, b, n in ((llama, llama, 3), (A, llama_b, 2)):
        sp = stitch.Splice(a, b, 2, adapter=linear(a, b))
        counts = {}
        for use_cache in (True, False):
            for new in (6, 12, 24):
                counter_a, ha = _count_block_tokens(a)
                counter_b, hb = _count_block_tokens(b) if b is not a else (counter_a, [])
                sp.generate(PROMPTS[:n], new, policy, stop_at_eos=False, use_cache=use_cache)
                for h in ha + hb:
                    h.remove()
                counts[use_cache, new] = (counter_a["calls"] + (counter_b["calls"] if b is not a else 0),
                                          counter_a["tokens"] + (counter_b["tokens"] if b is not a else 0))
        calls = [counts[True, n][0] for n in (6, 12, 24)]
        assert calls[2] - calls[1] == 2 * (calls[1] - calls[0])  # one forward of A and one of B per step
        # Doubling the new tokens doubles the work (linear) for the cache; more than that when re-encoding.
        tokens = [counts[True, n][1] for n in (6, 12, 24)]
        ref = [counts[False, n][1] for n in (6, 12, 24)]
        assert tokens[2] - tokens[1] <= 2.1 * (tokens[1] - tokens[0])
        assert ref[2] - ref[1] >= 2.3 * (ref[1] - ref[0])


def test_stops_at_eos_and_stop_strings(llama):
    sp = stitch.Splice(llama, llama, 1)
    free = sp.generate(PROMPTS, 10, stop_at_eos=False, return_ids=True)
    token = free.token_ids[0][2]
    out = sp.generate(PROMPTS, 10, eos_token_id=token, return_ids=True)
    assert out.token_ids[0] == free.token_ids[0][: free.token_ids[0].index(token) + 1]
    assert out.stopped[0] == "eos"
    stop = free.texts[0][3:5]
    cut = sp.generate(PROMPTS[:1], 10, stop_strings=[stop], stop_at_eos=False, return_ids=True)
    assert stop in cut.texts[0] and stop not in cut.texts[0][:-1] and cut.stopped == ["stop_string"]
    assert free.texts[0].startswith(cut.texts[0])


def test_scores_are_hf_style_and_greedy_picks_their_argmax(llama):
    out = stitch.Splice(llama, llama, 2).generate(PROMPTS, 5, stop_at_eos=False, output_scores=True)
    assert len(out.scores) == 5 and out.scores[0].shape == (len(PROMPTS), llama.vocab_size)
    picked = torch.stack([s.argmax(-1) for s in out.scores], 1).tolist()
    assert picked == out.token_ids
    ref = llama.logits(llama.encode(PROMPTS, padding_side="left"))[:, -1]
    torch.testing.assert_close(out.logits[0], ref, atol=1e-5, rtol=0)


def test_streamer_is_a_transformers_text_streamer(llama, capsys):
    sp = stitch.Splice(llama, llama, 1)
    text = sp.generate(PROMPTS[:1], 8, stop_at_eos=False, streamer=TextStreamer(llama.tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == text[0] + "\n"


def test_policies_differ_across_models(cross):
    A, B = cross
    sp = stitch.Splice(A, B, source_layer=2, adapter=linear(A, B))
    both = [sp.generate(PROMPTS, 6, policy=p, stop_at_eos=False, return_ids=True) for p in ("all", "prompt")]
    assert all(isinstance(t, str) for t in both[0].texts + both[1].texts)
    assert both[0].token_ids != both[1].token_ids
    restitch = sp.generate(PROMPTS, 6, "restitch", stop_at_eos=False, return_ids=True)
    assert restitch.token_ids == both[0].token_ids  # "all" is an alias


@pytest.mark.parametrize("policy", POLICIES)
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
    out = sp.generate(PROMPTS, 6, policy=policy, stop_at_eos=False, return_ids=True)
    assert out.token_ids == hf_greedy(B, PROMPTS, 6)


def test_bad_generation_arguments(llama):
    sp = stitch.Splice(llama, llama, source_layer=1)
    cases = [
        (dict(policy="everything"), r"policy: 'everything' is not one of \['prompt', 'restitch', 'all'\]"),
        (dict(max_new_tokens=0), r"max_new_tokens: expected an integer >= 1, got 0"),
        (dict(max_new_tokens=-3), r"max_new_tokens: expected an integer >= 1, got -3"),
        (dict(top_p=0.0), r"top_p: expected a number in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p: expected a number in \(0, 1\], got 1.5"),
        (dict(temperature=0), r"temperature: expected a number > 0, got 0"),
        (dict(top_k=-1), r"top_k: expected an integer >= 0, got -1"),
        (dict(stop_strings=[""]), r"stop_strings\[0\]: expected a non-empty string"),
        (dict(max_new_tokens=125), r"max_new_tokens: prompt 0 has \d+ tokens of B.*exceeds B's 128 positions"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sp.generate(PROMPTS, **{"max_new_tokens": 4, **kwargs})
    with pytest.raises(ValueError, match=r"texts\[1\]: empty string"):
        sp.generate(["ok", ""])
    with pytest.raises(ValueError, match=r"texts: expected a non-empty list of strings"):
        sp.generate([])
    with pytest.raises(ValueError, match=r"texts\[0\]: \d+ tokens exceed the model's 128 positions"):
        sp.generate(["word " * 200])


def test_bad_splice_layers_and_adapter_widths(llama, cross):
    A, B = cross
    with pytest.raises(ValueError, match=r"source_layer: layer 9 is out of range; valid layers are 0..3"):
        stitch.Splice(llama, llama, source_layer=9).generate(PROMPTS)
    with pytest.raises(ValueError, match=r"target_layer: layer -1 is out of range"):
        stitch.Splice(llama, llama, 1, target_layer=-1)
    with pytest.raises(ValueError, match=r"adapter: maps 7 → 32, but the splice needs d_source=32"):
        stitch.Splice(A, B, 1, adapter=torch.nn.Linear(7, B.d_model))
    with pytest.raises(ValueError, match=r"adapter: output width 5 but B's d_model is 32"):
        stitch.Splice(A, B, 1, adapter=torch.nn.Sequential(torch.nn.Linear(A.d_model, 5))).generate(PROMPTS, 2)


def test_side_by_side_records(cross, tok):
    A, B = cross
    records = analyses.generation.side_by_side(A, B, PROMPTS, 2, adapter=linear(A, B), max_new_tokens=5,
                                               stop_at_eos=False)
    assert [r["prompt"] for r in records] == [analyses.generation.escape_text(p) for p in PROMPTS]
    expected = ["A alone", "B alone", "spliced, prompt", "spliced, restitch", "inputs_embeds, prompt",
                "inputs_embeds, restitch"]
    assert list(records[0])[2:] == expected
    own = [A.tokenizer.decode(ids, skip_special_tokens=True) for ids in hf_greedy(A, PROMPTS, 5)]
    assert [r["A alone"] for r in records] == [analyses.generation.escape_text(t) for t in own]
    assert analyses.generation.escape_text("a\nb\t\x1b") == "a\\nb\\t\\u001b"
    assert analyses.generation.escape_text("a\u2028b\u2029") == "a\\u2028b\\u2029"
    assert "<table>" in render_report([Section("Generations", records)])
