"""TransformerLens conventions on HookedLM, checked against the HF model and tokenizer they wrap."""

import pytest
import torch

import stitch
from stitch.models.hooks import hook_names
from stitch.testing import byte_bpe_tokenizer, tiny_model

TEXTS = ["The quick brown fox.", "Two models"]


@pytest.fixture(scope="module")
def A():
    tok = byte_bpe_tokenizer()
    return stitch.load_model(tiny_model("llama", len(tok), 3, 32), tokenizer=tok)


def test_tokens_strings_and_back(A):
    ids = A.to_tokens(TEXTS)
    first = A.tokenizer(TEXTS[0])["input_ids"]
    assert ids.shape == (2, len(first)) and ids[0].tolist() == first
    assert torch.equal(ids, A.encode(TEXTS).input_ids)  # the same ids stitch itself runs on
    assert A.to_tokens(TEXTS, prepend_bos=False)[0].tolist() == A.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert A.to_tokens(TEXTS, padding_side="left")[1, -1] == ids[1, len(A.tokenizer(TEXTS[1])["input_ids"]) - 1]
    strs = A.to_str_tokens(TEXTS[0])
    assert len(strs) == len(first) and "".join(strs[1:]) == TEXTS[0]  # after the BOS, the text itself
    assert A.to_str_tokens(TEXTS) == [A.to_str_tokens(t) for t in TEXTS]
    assert A.to_string(ids[0, 1:]) == TEXTS[0] and A.to_string(ids[:, :3]) == [A.to_string(r) for r in ids[:, :3]]
    long = "x" * 400
    assert A.to_tokens(long).shape[1] == A.n_ctx  # truncate=True, as TransformerLens


def test_calling_the_model_equals_the_hf_forward(A):
    ids = A.to_tokens(TEXTS[0])
    hf = A.model(input_ids=ids, labels=ids)
    torch.testing.assert_close(A(TEXTS[0]), hf.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(A(TEXTS[0], return_type="loss"), hf.loss, rtol=1e-6, atol=1e-6)
    logits, loss = A(ids, return_type="both")
    assert torch.equal(logits, A(ids)) and A(ids, return_type=None) is None
    per_token = A(TEXTS, return_type="loss", loss_per_token=True)
    n = A.encode(TEXTS).attention_mask.sum() - 2
    torch.testing.assert_close(per_token.sum() / n, A(TEXTS, return_type="loss"))
    with pytest.raises(TypeError, match=r"\['stop_at_layer'\] not supported"):
        A(TEXTS, stop_at_layer=2)
    with pytest.raises(ValueError, match="return_type"):
        A(TEXTS, return_type="probs")


def test_cfg_summarises_the_model(A):
    cfg = A.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.n_heads, cfg.d_head) == (3, 32, A.vocab_size, 128, 4, 8)
    assert cfg.default_prepend_bos is True and cfg.family == "llama" and cfg.dtype == torch.float32


def test_run_with_cache_detaches_and_removes_the_batch_dim(A):
    A.model.requires_grad_(True)
    try:
        _, cache = A.run_with_cache(TEXTS[:1])
    finally:
        A.model.requires_grad_(False)
    assert list(cache) == hook_names(3) == list(A.hook_dict)  # forward order
    assert hook_names(2) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                             "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_in"]  # fmt: skip
    assert not any(t.requires_grad for t in cache.values())
    _, single = A.run_with_cache(TEXTS[:1], remove_batch_dim=True)
    assert torch.equal(single["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre"][0])
    _, plain = A.run_with_cache(TEXTS[:1], "blocks.0.hook_resid_pre", return_cache_object=False)
    assert type(plain) is dict and list(plain) == ["blocks.0.hook_resid_pre"]
    with pytest.raises(ValueError, match="incl_bwd"):
        A.run_with_cache(TEXTS, incl_bwd=True)


def test_cache_methods_take_transformer_lens_arguments_or_refuse_them_by_name(A):
    _, cache = A.run_with_cache(TEXTS)
    res = A.residuals(A.encode(TEXTS), [0, 1, 2, 3])
    stacked, labels = cache.accumulated_resid(layer=2, pos_slice=-1, return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre"] and stacked.shape == (3, 2, 32)  # an int drops the dim
    torch.testing.assert_close(stacked[2], res[2][:, -1])
    assert cache.accumulated_resid(pos_slice=(0, 2)).shape == (4, 2, 2, 32)
    torch.testing.assert_close(cache.accumulated_resid()[3], res[3])
    assert cache.stack_activation("resid_post", layer=2).shape[0] == 2
    for kwargs in ({"incl_mid": True}, {"apply_ln": True}, {"mlp_input": True}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}: not supported"):
            cache.accumulated_resid(**kwargs)
    with pytest.raises(ValueError, match="sublayer_type"):
        cache.stack_activation("resid_pre", sublayer_type="attn")
    with pytest.raises(AttributeError, match="decompose_resid: not supported"):
        cache.decompose_resid()
