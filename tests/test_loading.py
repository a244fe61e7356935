"""load_model loads the way from_pretrained does: every keyword passed through, dtype='auto', no CPU detour."""

import pytest
import torch
import transformers

import stitch
from tests.tiny import byte_bpe_tokenizer, tiny_model


@pytest.fixture
def recorded(monkeypatch, tok):
    """from_pretrained of model and tokenizer replaced by recorders returning a tiny model."""
    calls = {}

    def model_loader(path, **kwargs):
        calls["model"] = (path, kwargs)
        return tiny_model("llama", vocab_size=len(tok))

    def tokenizer_loader(path, **kwargs):
        calls["tokenizer"] = (path, kwargs)
        return tok

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_loader)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_loader)
    return calls


def test_keywords_pass_through_to_from_pretrained(recorded):
    lm = stitch.load_model(
        "owner/model", dtype="auto", device="cpu", revision="abc123", attn_implementation="eager",
        low_cpu_mem_usage=True, quantization_config={"bits": 4},
    )
    path, kwargs = recorded["model"]
    assert path == "owner/model"
    assert kwargs == {
        "dtype": "auto", "device_map": {"": torch.device("cpu")}, "revision": "abc123",
        "attn_implementation": "eager", "low_cpu_mem_usage": True, "quantization_config": {"bits": 4},
        "trust_remote_code": False,
    }  # straight to the device: from_pretrained places the weights, no .to() afterwards
    assert recorded["tokenizer"] == ("owner/model", {"trust_remote_code": False, "revision": "abc123"})
    assert lm.name == "owner/model"


def test_device_map_and_dtype(recorded):
    stitch.load_model("owner/model", device_map="auto", dtype="bf16")
    assert recorded["model"][1]["device_map"] == "auto" and recorded["model"][1]["dtype"] is torch.bfloat16
    stitch.load_model("owner/model")
    assert recorded["model"][1]["dtype"] == "auto" and "device_map" not in recorded["model"][1]
    with pytest.raises(ValueError, match=r"device, device_map: got both"):
        stitch.load_model("owner/model", device="cpu", device_map="auto")


def test_loaded_models_keep_dtype_and_flags(tok):
    hf = tiny_model("llama", vocab_size=len(tok)).to(torch.bfloat16)
    hf.model.layers[0].requires_grad_(False)
    flags = [p.requires_grad for p in hf.parameters()]
    lm = stitch.load_model(hf, tokenizer=tok, dtype="auto")
    assert lm.dtype is torch.bfloat16 and lm.model is hf
    assert [p.requires_grad for p in hf.parameters()] == flags  # never silently changed
    with pytest.raises(TypeError, match=r"\['revision'\]: from_pretrained options apply to hub ids"):
        stitch.load_model(hf, tokenizer=tok, revision="main")
    with pytest.raises(ValueError, match=r"dtype: 'int8' is not supported; use a torch.dtype, 'auto'"):
        stitch.load_model(hf, tokenizer=tok, dtype="int8")


def test_bf16_source_into_fp32_target_keeps_the_adapter_fp32(texts):
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a)).to(torch.bfloat16), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok_b), seed=1), tokenizer=tok_b)
    adapter = stitch.adapters.Affine(32)
    sp = stitch.Splice(A, B, source_layer=2, target_layer=1, adapter=adapter)
    with stitch.models.placement.record_moves() as moves:
        out = sp(texts)
    out.loss.backward()
    assert all(p.dtype is torch.float32 and p.grad.dtype is torch.float32 for p in adapter.parameters())
    [move] = moves  # A's states cross once, into the adapter's dtype
    assert (move.source_dtype, move.dtype) == (torch.bfloat16, torch.float32)
    assert out.logits.dtype is torch.float32


def test_a_loaded_model_is_sharded_as_from_pretrained_shards_it(monkeypatch, tok):
    """device_map= on a loaded model: from_pretrained's strategies (balanced memory for "auto"), its skip_keys."""
    import accelerate
    import accelerate.utils

    calls = []
    dispatch = accelerate.dispatch_model
    monkeypatch.setattr(accelerate.utils, "get_balanced_memory", lambda model, **kw: calls.append(("balanced", kw)) or {0: 7})
    monkeypatch.setattr(accelerate, "infer_auto_device_map", lambda model, **kw: calls.append(("infer", kw)) or {"": "cpu"})
    monkeypatch.setattr(accelerate, "dispatch_model", lambda model, **kw: calls.append(("dispatch", kw)) or dispatch(model, **kw))
    hf = tiny_model("llama", vocab_size=len(tok))
    reference = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok).logits(["a text"])
    lm = stitch.load_model(hf, tokenizer=tok, device_map="auto")
    assert calls == [
        ("balanced", {"no_split_module_classes": ["LlamaDecoderLayer"], "low_zero": False}),
        ("infer", {"max_memory": {0: 7}, "no_split_module_classes": ["LlamaDecoderLayer"]}),
        ("dispatch", {"device_map": {"": "cpu"}, "skip_keys": hf._skip_keys_device_placement}),
    ]
    torch.testing.assert_close(lm.logits(["a text"]), reference, rtol=0, atol=0)
    calls.clear()
    stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok, device_map="sequential")
    assert [name for name, _ in calls] == ["infer", "dispatch"] and calls[0][1]["max_memory"] is None
    with pytest.raises(ValueError, match=r"device_map: got 'fast'; valid: one of \['auto', 'balanced'"):
        stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok, device_map="fast")
