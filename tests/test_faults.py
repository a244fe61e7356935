"""Hostile use of the hooked model: hooks on skipped blocks, re-entrant calls, foreign batches, bad dtypes.

Each test here failed on the code before issue 14 (a wrong record, a wrong or None result, a recursion, or
a silent cast); the reference is the HF forward or raw torch hooks where one exists.
"""

import copy

import pytest
import torch

import stitch
from tests.test_hooks import hooks_left
from tests.tiny import byte_bpe_tokenizer, tiny_model

CALLS = {
    "logits": lambda m, b: m.logits(b),
    "residuals": lambda m, b: m.residuals(b, [1]),
    "run_from": lambda m, b: m.run_from(torch.zeros(*b.shape, m.d_model), 1, b),
    "run_with_hooks": lambda m, b: m.run_with_hooks(b, []),
    "run_with_cache": lambda m, b: m.run_with_cache(b),
    "run_from_embeds": lambda m, b: m.run_from_embeds(torch.zeros(*b.shape, m.d_model), b),
}


def hf_logits(model, batch):
    inputs = dict(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    )
    return model.model(**inputs).logits


# ---- item 5: hooks on blocks a splice or run_from skips -------------------------------------------------


@pytest.mark.parametrize(
    "name", ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
)
def test_hook_below_the_splice_layer_is_refused(llama, texts, name):
    n_hooks = hooks_left(llama)
    sp = stitch.Splice(llama, llama, source_layer=2)
    seen = []
    with pytest.raises(
        RuntimeError, match=rf"hook {name}: layer \d is not computed by this forward.*run_from\(layer=2\)"
    ):
        with llama.hooks([(name, lambda r, h: seen.append(r))]):
            sp(texts)
    # A's run to layer 2 fired the hook with A's true stream; B's skipped block never recorded anything
    assert len(seen) == 1
    assert hooks_left(llama) == n_hooks


def test_hook_below_run_from_inside_a_hooks_context_is_refused(llama, texts):
    batch = llama.encode(texts)
    resid = llama.residuals(batch, [2])[2]
    with pytest.raises(RuntimeError, match=r"hook blocks.0.hook_resid_post: .*skips blocks \[0, 2\)"):
        with llama.hooks([("blocks.0.hook_resid_post", lambda r, h: None)]):
            llama.run_from(resid, 2, batch)


def test_hook_at_the_splice_layer_sees_the_injected_stream(llama, texts):
    """An enclosing hooks() at layer M must see what the splice injects, not B's skipped embedding output."""
    batch = llama.encode(texts)
    injected = 0.5 * llama.residuals(batch, [2])[2]
    seen = {}
    with llama.hooks([("blocks.2.hook_resid_pre", lambda r, h: seen.update(x=r.clone()))]):
        llama.run_from(injected, 2, batch)
    torch.testing.assert_close(seen["x"], injected, rtol=0, atol=0)


def test_filter_hook_inside_a_splice_names_the_skipped_layer(llama, texts):
    sp = stitch.Splice(llama, llama, source_layer=1, target_layer=2)
    with pytest.raises(RuntimeError, match="not computed by this forward"):
        with llama.hooks([(lambda n: n.endswith("hook_resid_pre"), lambda r, h: None)]):
            sp(texts)
    torch.testing.assert_close(sp(texts).logits, llama.run_from(llama.residuals(texts, [1])[1], 2, texts))


# ---- item 6: re-entrant calls --------------------------------------------------------------------------


@pytest.mark.parametrize("inner", sorted(CALLS))
@pytest.mark.parametrize("outer", ["run_with_hooks", "residuals", "run_from"])
def test_a_call_from_inside_a_hook_of_the_same_model_raises(llama, texts, outer, inner):
    batch = llama.encode(texts)
    n_hooks = hooks_left(llama)

    def reenter(resid, hook):
        CALLS[inner](llama, batch)

    with pytest.raises(RuntimeError, match=rf"{inner}: called from inside a hook of {outer} on model"):
        if outer == "run_with_hooks":
            llama.run_with_hooks(batch, [("blocks.1.hook_resid_pre", reenter)])
        elif outer == "residuals":
            with llama.hooks([("blocks.1.hook_resid_pre", reenter)]):
                llama.residuals(batch, [2])
        else:
            llama.run_from(
                llama.residuals(batch, [1])[1], 1, batch, fwd_hooks=[("blocks.2.hook_resid_pre", reenter)]
            )
    assert hooks_left(llama) == n_hooks
    torch.testing.assert_close(llama.logits(batch), hf_logits(llama, batch), rtol=0, atol=0)


def test_a_hook_rerunning_the_raw_model_raises_instead_of_recursing(llama, texts):
    batch = llama.encode(texts)

    def reenter(resid, hook):
        llama.logits(batch)

    with pytest.raises(RuntimeError, match=r"hook blocks.1.hook_resid_pre: fired again while it was running"):
        with llama.hooks([("blocks.1.hook_resid_pre", reenter)]):
            hf_logits(llama, batch)
    torch.testing.assert_close(llama.logits(batch), hf_logits(llama, batch), rtol=0, atol=0)


def test_another_model_may_run_inside_a_hook(llama, tok, texts):
    other = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=1), tokenizer=tok)
    batch = llama.encode(texts)
    seen = {}

    def record(resid, hook):
        seen["x"] = other.logits(batch)

    llama.run_with_hooks(batch, [("blocks.1.hook_resid_pre", record)])
    torch.testing.assert_close(seen["x"], hf_logits(other, batch), rtol=0, atol=0)


# ---- item 9: integer / bool tensors and filters that match nothing ---------------------------------------


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.int32])
def test_integer_streams_are_refused(llama, texts, dtype):
    batch = llama.encode(texts)
    ids = torch.ones(*batch.shape, llama.d_model, dtype=dtype)
    with pytest.raises(TypeError, match=rf"resid: expected a floating-point stream, got {dtype}"):
        llama.run_from(ids, 1, batch)
    with pytest.raises(TypeError, match=rf"embeds: expected a floating-point stream, got {dtype}"):
        llama.run_from_embeds(ids, batch)
    with pytest.raises(TypeError, match=rf"hook blocks.1.hook_resid_pre: returned a {dtype} tensor"):
        llama.run_with_hooks(batch, [("blocks.1.hook_resid_pre", lambda r, h: r.to(dtype))])


def test_adapter_returning_integers_is_refused(llama, texts):
    class Rounds(torch.nn.Module):
        def forward(self, x):
            return x.round().long()

    sp = stitch.Splice(llama, llama, source_layer=1, adapter=Rounds())
    with pytest.raises(TypeError, match=r"adapter: returned a torch.int64 tensor; .*floating-point"):
        sp(texts)


def test_a_name_filter_that_matches_nothing_is_an_error(llama, texts):
    never = lambda name: name.startswith("blocks.99")  # noqa: E731
    with pytest.raises(ValueError, match=r"fwd_hooks: the name filter .* matches no hook point"):
        llama.run_with_hooks(texts, [(never, lambda r, h: None)])
    with pytest.raises(ValueError, match=r"fwd_hooks: the name filter .* matches no hook point"):
        with llama.hooks([(never, lambda r, h: None)]):
            pass
    with pytest.raises(ValueError, match=r"names_filter: the name filter .* matches no hook point"):
        llama.run_with_cache(texts, names_filter=never)


# ---- item 7: a batch encoded by another tokenizer --------------------------------------------------------


@pytest.fixture(scope="module")
def big_vocab():
    """A model whose tokenizer (vocabulary 400) differs from the suite's (300), ids of the latter all fit."""
    tok400 = byte_bpe_tokenizer(400)
    return stitch.load_model(tiny_model("llama", vocab_size=len(tok400)), tokenizer=tok400)


def test_a_batch_from_another_tokenizer_is_refused(llama, big_vocab, texts):
    foreign = llama.encode(texts)
    assert int(foreign.input_ids.max()) < big_vocab.vocab_size  # ids fit: only the stamp can tell
    for call in ("logits", "residuals", "run_from", "run_with_cache"):
        with pytest.raises(
            ValueError, match=r"batch: encoded by another tokenizer \(fingerprint \w+\) than model"
        ):
            CALLS[call](big_vocab, foreign)
    # the same texts encoded by big_vocab itself, or the same ids passed raw, are accepted
    torch.testing.assert_close(big_vocab.logits(texts), hf_logits(big_vocab, big_vocab.encode(texts)))
    raw = big_vocab.logits(foreign.input_ids[:1, : int(foreign.lengths()[0])])
    assert raw.shape[:2] == (1, int(foreign.lengths()[0]))


def test_the_fingerprint_follows_the_vocabulary_not_the_object(llama, tok, texts):

    twin = stitch.load_model(llama.model, tokenizer=copy.deepcopy(tok))
    assert twin.tokenizer_fingerprint == llama.tokenizer_fingerprint
    no_bos = stitch.load_model(llama.model, tokenizer=byte_bpe_tokenizer(bos=False))  # same vocabulary
    batch = llama.encode(texts)
    assert batch.tokenizer_fingerprint == llama.tokenizer_fingerprint
    torch.testing.assert_close(twin.logits(batch), no_bos.logits(batch), rtol=0, atol=0)
    assert batch.to("cpu").tokenizer_fingerprint == batch.tokenizer_fingerprint


def test_source_grid_splice_across_tokenizers_still_runs(llama, big_vocab, texts):
    sp = stitch.Splice(llama, big_vocab, source_layer=1, alignment="source")
    out = sp(texts)
    assert out.logits.shape[:2] == out.source.shape
