"""TransformerLens-style hook points: names, semantics, hygiene under faults."""

import pytest
import torch

import stitch
from tests.test_model import count_block_calls


def hooks_left(model) -> int:
    """Hooks and patched forwards on the model's modules. Tests compare against a count taken before,
    since transformers 5 installs hooks of its own the first time `output_hidden_states=True` is used."""
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + ("forward" in m.__dict__)
        for m in model.model.modules()
    )


def test_run_with_hooks_modifies_the_stream(llama, texts):
    n_hooks = hooks_left(llama)
    batch = llama.encode(texts)
    base = llama.logits(batch)
    seen = []

    def zero(resid, hook):
        seen.append((hook.name, hook.layer()))
        return torch.zeros_like(resid)

    zeroed = llama.run_with_hooks(batch, fwd_hooks=[("blocks.2.hook_resid_pre", zero)])
    assert seen == [("blocks.2.hook_resid_pre", 2)]
    assert not torch.allclose(zeroed, base)
    # zeroing layer 2 is the same as running from a zero stream at layer 2
    torch.testing.assert_close(zeroed, llama.run_from(torch.zeros(*batch.shape, llama.d_model), 2, batch))
    assert hooks_left(llama) == n_hooks


def test_run_with_cache_matches_residuals(llama, texts):
    batch = llama.encode(texts)
    logits, cache = llama.run_with_cache(batch)
    res = llama.residuals(batch, list(range(llama.n_layers + 1)))
    assert torch.equal(logits, llama.logits(batch))
    for layer in range(llama.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], res[layer])
        assert torch.equal(cache["resid_pre", layer], res[layer])
        assert torch.equal(cache["resid_post", layer], res[layer + 1])
    assert cache.accumulated_resid().shape == (llama.n_layers + 1, *batch.shape, llama.d_model)
    _, only = llama.run_with_cache(batch, names_filter=lambda n: n.endswith("1.hook_resid_pre"))
    assert list(only) == ["blocks.1.hook_resid_pre"]


def test_hooks_context_manager_applies_to_raw_hf_forward(llama, texts):
    n_hooks = hooks_left(llama)
    batch = llama.encode(texts)
    inputs = dict(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    )
    base = llama.model(**inputs).logits
    with llama.hooks([(lambda n: n.endswith("resid_pre"), lambda r, hook: r * 0.5)]):
        halved = llama.model(**inputs).logits
    assert not torch.allclose(base, halved)
    assert torch.equal(llama.model(**inputs).logits, base)
    assert hooks_left(llama) == n_hooks


def test_unknown_hook_name_lists_valid_names(llama, texts):
    with pytest.raises(
        ValueError, match=r"hook name.*'blocks\.9\.hook_resid_pre'.*valid names.*blocks\.0\.hook_resid_pre"
    ):
        llama.run_with_hooks(texts, fwd_hooks=[("blocks.9.hook_resid_pre", lambda r, h: None)])
    with pytest.raises(ValueError, match="hook name"):
        llama.run_with_hooks(texts, fwd_hooks=[("blocks.0.attn.hook_z", lambda r, h: None)])
    for names_filter in ("blocks.9.hook_resid_pre", ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z"]):
        with pytest.raises(ValueError, match=r"hook name.*valid names"):  # not an empty cache
            llama.run_with_cache(texts, names_filter=names_filter)


def test_hook_that_never_fires_is_an_error(llama, texts):
    n_hooks = hooks_left(llama)
    with pytest.raises(RuntimeError, match=r"never fired.*blocks\.2\.hook_resid_pre"):
        with llama.hooks([("blocks.2.hook_resid_pre", lambda r, h: None)]):
            pass
    with pytest.raises(RuntimeError, match="never fired"):
        with llama.hooks([("blocks.2.hook_resid_pre", lambda r, h: None)]):
            llama.residuals(texts, [1])  # stops before block 2
    assert hooks_left(llama) == n_hooks


def test_hook_hygiene_under_faults(llama, texts):
    n_hooks = hooks_left(llama)
    batch = llama.encode(texts)
    before = llama.logits(batch)

    def boom(resid, hook):
        raise KeyError("inside a hook")

    with pytest.raises(KeyError):
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_pre", boom)])
    assert hooks_left(llama) == n_hooks
    with pytest.raises(ValueError):  # bad input discovered mid-forward, after blocks were skipped
        llama.run_from(torch.zeros(2, 3, llama.d_model), 1, batch)
    assert hooks_left(llama) == n_hooks
    res = llama.residuals(batch, [2])[2]
    with pytest.raises(
        ValueError, match=r"hook blocks\.0\.hook_resid_pre.*shape"
    ):  # the hook returns a tensor of the wrong shape
        llama.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", lambda r, h: r[:, :1, :4])])
    assert hooks_left(llama) == n_hooks
    assert torch.equal(llama.logits(batch), before)
    assert torch.equal(llama.residuals(batch, [2])[2], res)


def test_run_from_skips_blocks_for_real(llama, texts):
    batch = llama.encode(texts)
    res = llama.residuals(batch, [2])[2]
    with count_block_calls(llama) as calls:
        llama.run_from(res, 2, batch)
    assert calls.counts == [0, 0, 1]
    last = llama.residuals(batch, [3])[3]
    with count_block_calls(llama) as calls:
        llama.run_from(last, 3, batch)
    assert calls.counts == [0, 0, 0]


def test_transformerlens_conveniences(llama, texts):
    batch = llama.encode(texts[:1])
    logits, cache = llama.run_with_cache(batch.input_ids[0])  # token ids, as TransformerLens users pass them
    assert torch.equal(logits, llama.logits(batch))
    assert torch.equal(cache["ln_final.hook_in"], cache["resid_post", -1])
    assert cache.stack_activation("resid_pre").shape == (llama.n_layers, *batch.shape, llama.d_model)
    single = cache.remove_batch_dim()
    assert torch.equal(single["resid_pre", 1], cache["resid_pre", 1][0])
    with pytest.raises(ValueError, match="tokens: expected integer token ids"):
        llama.logits(torch.zeros(2, 3))


def test_hook_returning_another_dtype_is_cast_back(llama, texts):
    batch = llama.encode(texts)
    base = llama.logits(batch)
    same = llama.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_pre", lambda r, h: r.double())])
    assert same.dtype == base.dtype and torch.equal(same, base)
    with pytest.raises(ValueError, match=r"texts: expected a non-empty list of strings, got Batch"):
        stitch.Splice(llama, llama, source_layer=1)(batch)
