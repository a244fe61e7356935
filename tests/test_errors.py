"""Bad input gets a clear error naming the parameter, the value and the valid range."""

import pytest
import torch
import transformers
from torch import nn

import stitch
from stitch.batch import Batch
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def wide(tok):
    return stitch.load_model(tiny_model("qwen2", vocab_size=len(tok), d_model=48), tokenizer=tok)


@pytest.mark.parametrize(
    "layer, error, pattern",
    [
        (-1, ValueError, r"source_layer: layer -1 is out of range; valid layers are 0\.\.3"),
        (4, ValueError, r"source_layer: layer 4 is out of range; valid layers are 0\.\.3"),
        (2.0, TypeError, r"source_layer: expected an integer layer in \[0, 3\], got 2\.0"),
        ("2", TypeError, r"source_layer: expected an integer layer in \[0, 3\], got '2'"),
    ],
)
def test_bad_source_layer(llama, layer, error, pattern):
    with pytest.raises(error, match=pattern):
        stitch.Splice(llama, llama, source_layer=layer)


def test_bad_target_layer_and_residual_layers(llama, texts):
    with pytest.raises(ValueError, match=r"target_layer: layer 7 is out of range; valid layers are 0\.\.3"):
        stitch.Splice(llama, llama, source_layer=1, target_layer=7)
    with pytest.raises(ValueError, match=r"layers: layer 9 is out of range"):
        llama.residuals(texts, layers=[1, 9])
    with pytest.raises(ValueError, match=r"layers: expected a non-empty list"):
        llama.residuals(texts, layers=[])
    with pytest.raises(ValueError, match=r"target_layer: injection='inputs_embeds'.*must be 0"):
        stitch.Splice(llama, llama, source_layer=1, target_layer=2, injection="inputs_embeds")


def test_width_mismatch_without_adapter(llama, wide):
    with pytest.raises(
        ValueError, match=r"adapter: None needs equal widths.*d_source=32.*d_target=48.*Projection\(32, 48\)"
    ):
        stitch.Splice(llama, wide, source_layer=1)


def test_adapter_of_the_wrong_widths(llama, wide, texts):
    with pytest.raises(ValueError, match=r"adapter: maps 16 → 48.*d_source=32"):
        stitch.Splice(llama, wide, source_layer=1, adapter=nn.Linear(16, 48))
    undeclared = nn.Sequential(nn.Linear(32, 40))
    with pytest.raises(ValueError, match=r"adapter: output width 40 but B's d_model is 48"):
        stitch.Splice(llama, wide, source_layer=1, adapter=undeclared)(texts)
    with pytest.raises(TypeError, match="adapter: expected an nn.Module"):
        stitch.Splice(llama, wide, source_layer=1, adapter=torch.eye(32))


@pytest.mark.parametrize(
    "texts, error, pattern",
    [
        ([], ValueError, r"texts: expected a non-empty list of strings"),
        (["fine", ""], ValueError, r"texts\[1\]: empty string"),
        (["fine", 3], TypeError, r"texts\[1\]: expected a string, got int"),
    ],
)
def test_bad_texts(llama, texts, error, pattern):
    with pytest.raises(error, match=pattern):
        llama.encode(texts)
    with pytest.raises(error, match=pattern):
        stitch.Splice(llama, llama, source_layer=1)(texts)


def test_text_longer_than_the_models_positions(llama):
    with pytest.raises(
        ValueError, match=r"texts\[0\]: \d+ tokens exceed the model's 128 positions \(valid: 1\.\.128"
    ):
        llama.encode(["word " * 400])


def test_token_ids_out_of_vocabulary(llama):
    batch = llama.encode(["some text"])
    ids = batch.input_ids.clone()
    ids[0, 1] = 5000
    bad = Batch(batch.texts, ids, batch.attention_mask, batch.position_ids, batch.spans, batch.special_mask)
    with pytest.raises(
        ValueError, match=r"input_ids: token id 5000 is outside the model's vocabulary \[0, 300\)"
    ):
        llama.logits(bad)


def test_models_on_different_devices(llama, tok):
    with pytest.raises(ValueError, match=r"model: its weights are on the 'meta' device"):
        stitch.load_model(tiny_model("llama", vocab_size=len(tok)).to("meta"), tokenizer=tok)
    # wrapped directly (load_model refuses meta weights), a meta model stands in for one on another device
    on_meta = stitch.HookedLM(tiny_model("llama", vocab_size=len(tok)).to("meta"), tok)
    with pytest.raises(ValueError, match=r"B: model B is on meta but model A is on cpu"):
        stitch.Splice(llama, on_meta, source_layer=1)
    with pytest.raises(ValueError, match=r"batch: on device cpu but model .* is on meta"):
        on_meta.logits(llama.encode(["text"]))

    meta_adapter = stitch.adapters.Affine(32).to("meta")  # sp.to(device) moves the adapter, not the models
    with pytest.raises(ValueError, match=r"adapter: on device meta but the models are on cpu"):
        stitch.Splice(llama, llama, source_layer=1, adapter=meta_adapter)(["text"])


def test_unknown_architecture_lists_supported_families(tok):
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
        )
    )
    with pytest.raises(
        ValueError,
        match=r"unsupported architecture model_type='bert'.*supported: \[.*'gpt2'.*'llama'.*To add one",
    ):
        stitch.load_model(bert, tokenizer=tok)


def test_unknown_hook_name(llama, texts):
    with pytest.raises(
        ValueError,
        match=r"hook name: unknown hook point 'blocks\.3\.hook_resid_pre'; valid names are blocks\.\{0\.\.2\}",
    ):
        llama.run_with_hooks(texts, fwd_hooks=[("blocks.3.hook_resid_pre", lambda r, h: None)])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(alignment="diagonal"), r"alignment: 'diagonal' is not one of \['target', 'source'\]"),
        (dict(padding_side="middle"), r"padding_side: 'middle' is not one of \['right', 'left'\]"),
        (dict(injection="attn"), r"injection: 'attn' is not one of"),
    ],
)
def test_bad_splice_options(llama, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        stitch.Splice(llama, llama, source_layer=1, **kwargs)


def test_bad_models_and_loading_options(llama, tok):
    with pytest.raises(TypeError, match=r"A: expected a stitch.HookedLM"):
        stitch.Splice(llama.model, llama, source_layer=1)
    with pytest.raises(ValueError, match=r"device: 'gpu0' is not a device"):
        stitch.load_model(llama.model, tokenizer=tok, device="gpu0")
    with pytest.raises(ValueError, match=r"dtype: 'float8' is not supported"):
        stitch.load_model(llama.model, tokenizer=tok, dtype="float8")
    with pytest.raises(ValueError, match=r"tokenizer: required"):
        stitch.load_model(llama.model)
    with pytest.raises(TypeError, match=r"model: expected a hub id"):
        stitch.load_model(42)


def test_run_from_with_a_stream_of_the_wrong_shape(llama, texts):
    batch = llama.encode(texts)
    with pytest.raises(
        ValueError,
        match=r"resid: expected shape \[batch, pos, d_model\] = \[4, \d+, 32\], got \(4, \d+, 16\)",
    ):
        llama.run_from(torch.zeros(*batch.shape, 16), 1, batch)
