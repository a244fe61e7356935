"""Bad input gets a clear error naming the parameter, the value and the valid range."""

import json
import os
import pickle
import stat
import struct

import pytest
import torch
import transformers
from torch import nn

import stitch
import stitch.training.checkpoint as ckpt
from analyses.cka import cka_matrix, linear_cka
from stitch.adapters.io import FORMAT, FORMAT_VERSION, HEADER_KEY
from stitch.batch import Batch
from stitch.checks import available_devices
from stitch.cli.common import read_texts
from stitch.cli.main import make_config, read_yaml
from stitch.files import write_atomic
from stitch.training.config import TrainConfig
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
    sp = stitch.Splice(llama, on_meta, source_layer=1)  # models on different devices are allowed (issue 17)
    assert sp.write_device == torch.device("meta")
    with pytest.raises(ValueError, match=r"batch: on device cpu but model .* is on meta"):
        on_meta.logits(llama.encode(["text"]))

    meta_adapter = stitch.adapters.Affine(32).to("meta")  # no data: Splice cannot move it to B's side
    with pytest.raises(ValueError, match=r"adapter: on device meta but B's layer 1 is on cpu"):
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


# ---- issue 14, item 9: small inputs that used to be accepted silently -----------------------------------


def test_debiased_must_be_a_bool():
    x = torch.randn(8, 4)
    with pytest.raises(TypeError, match=r"debiased: expected True or False, got 'yes'"):
        linear_cka(x, x, debiased="yes")
    with pytest.raises(TypeError, match=r"debiased: expected True or False, got 0"):
        cka_matrix([x], [x], debiased=0)


def test_warmup_longer_than_the_run():
    with pytest.raises(
        ValueError, match=r"warmup: 10 steps is longer than the run's 5 steps; valid warmup: 0\.\.5"
    ):
        TrainConfig(out="runs/x", source_layer=1, steps=5, warmup=10)
    assert TrainConfig(out="runs/x", source_layer=1, steps=5, warmup=5).warmup == 5


def test_yaml_keys_given_twice_and_deep_nesting(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("ridge: 0.1\nkind: affine\nridge: 0.0\n")
    with pytest.raises(ValueError, match=r"(?s)not valid YAML: the key 'ridge' is given twice.*line 3"):
        read_yaml("fit", str(twice))
    deep = tmp_path / "deep.yaml"
    deep.write_text("ridge: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match=r"not valid YAML: nesting deeper than 64 levels"):
        make_config("fit", str(deep), {})
    once = tmp_path / "once.yaml"
    once.write_text("ridge: 0.1\nkind: affine\n")
    assert read_yaml("fit", str(once)) == {"ridge": 0.1, "kind": "affine"}


def test_upper_case_safetensors_suffix_is_a_file(tmp_path):
    adapter = stitch.adapters.Affine(4, 3)
    path = stitch.save_adapter(adapter, tmp_path / "L8.SAFETENSORS")
    assert path == tmp_path / "L8.SAFETENSORS" and path.is_file()
    assert (tmp_path / "L8.json").is_file()
    assert torch.equal(stitch.load_adapter(tmp_path / "L8.SAFETENSORS").weight, adapter.weight)


def test_write_atomic_never_touches_the_umask(tmp_path, monkeypatch):
    def no_umask(mask):  # the umask is process-wide: setting it races with every other thread's files
        raise AssertionError("write_atomic called os.umask")

    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        monkeypatch.setattr(os, "umask", no_umask)
        write_atomic(tmp_path / "atomic", "x")
        adapter = stitch.adapters.Affine(4)
        step = ckpt.save_checkpoint(tmp_path / "ck", 1, adapter, torch.optim.AdamW(adapter.parameters()))
    finally:
        monkeypatch.undo()
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic") == mode(tmp_path / "plain") == 0o640
    assert mode(step) == 0o750  # what mkdir gives under this umask, not mkdtemp's 0700
    assert not list((tmp_path / "ck").glob(".*tmp*"))


# ---- item 10: load_adapter on hostile files -------------------------------------------------------------


def write_raw_adapter(path, record, tensors=None, metadata=None):
    """A safetensors file written byte by byte: any header, valid or not."""
    tensors = {"weight": ([2, 2], b"\0" * 16)} if tensors is None else tensors
    header, data, offset = {}, b"", 0
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    header["__metadata__"] = metadata if metadata is not None else {HEADER_KEY: json.dumps(record)}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def record(kind="linear", **config):
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "config": config}


def test_claimed_widths_are_checked_before_anything_is_allocated(tmp_path):
    # 10^7 x 10^7 floats would be 400 TB: building the module from the header's claim cannot even start
    path = write_raw_adapter(tmp_path / "huge.safetensors", record(d_source=10**7, d_target=10**7))
    assert path.stat().st_size < 1000
    with pytest.raises(
        ValueError, match=r"tensor 'weight' has shape \(2, 2\) in the file, but a linear adapter"
    ):
        stitch.load_adapter(path)


@pytest.mark.parametrize(
    "metadata, pattern",
    [
        ({HEADER_KEY: "[1, 2]"}, r"corrupt stitch adapter config in the header \(not a JSON object\)"),
        ({HEADER_KEY: "{not json"}, r"huge.safetensors: corrupt stitch adapter config in the header"),
        ({HEADER_KEY: json.dumps({"format": FORMAT, "format_version": 1})}, r"needs a string 'kind'"),
        (
            {HEADER_KEY: json.dumps({**record(), "config": [4, 4]})},
            r"needs a string 'kind' and an object 'config'",
        ),
        ({HEADER_KEY: json.dumps({**record(), "format_version": "1"})}, r"version '1' is not readable here"),
        (
            {HEADER_KEY: json.dumps(record(kind="nope", d_source=2))},
            r"does not build a 'nope' adapter: unknown",
        ),
        ([1], r"without a stitch adapter config"),
    ],
)
def test_half_valid_headers_name_the_file(tmp_path, metadata, pattern):
    path = write_raw_adapter(tmp_path / "huge.safetensors", None, metadata=metadata)
    with pytest.raises(ValueError, match=pattern):
        stitch.load_adapter(path)


def test_a_tensor_without_a_shape_is_a_corrupt_header(tmp_path):
    path = write_raw_adapter(
        tmp_path / "a.safetensors", record(d_source=2, d_target=2), tensors={"weight": ("x", b"\0" * 16)}
    )
    with pytest.raises(ValueError, match=r"corrupt safetensors header"):
        stitch.load_adapter(path)


def test_short_files_are_truncated_not_pickles(tmp_path):
    short = (
        tmp_path / "short.safetensors"
    )  # the first 8 bytes of a safetensors file whose header is 640 bytes
    short.write_bytes(struct.pack("<Q", 640))
    assert short.read_bytes()[:2] == b"\x80\x02"
    with pytest.raises(ValueError, match=r"truncated file \(8 bytes"):
        stitch.load_adapter(short)
    tiny_pickle = tmp_path / "p.safetensors"
    tiny_pickle.write_bytes(pickle.dumps(None, protocol=2))
    with pytest.raises(ValueError, match=r"this is a pickle"):
        stitch.load_adapter(tiny_pickle)


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "meta"])
def test_load_adapter_on_a_missing_device_names_it(tmp_path, device):
    if device.split(":")[0] in {d.split(":")[0] for d in available_devices()} and device != "cuda:7":
        pytest.skip(f"{device} exists here")
    path = stitch.save_adapter(stitch.adapters.Affine(4), tmp_path / "a.safetensors")
    with pytest.raises(
        ValueError, match=rf"device: '{device}' (is not available here|holds shapes but no data)"
    ):
        stitch.load_adapter(path, device=device)


# ---- item 11: devices the machine does not have ---------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "meta"])
def test_load_model_on_a_missing_device_names_it_and_the_available_ones(tok, device):
    if device.split(":")[0] in {d.split(":")[0] for d in available_devices()} and device != "cuda:7":
        pytest.skip(f"{device} exists here")
    with pytest.raises(ValueError, match=rf"device: '{device}' .*available devices: \['cpu'"):
        stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok, device=device)


def test_cli_device_error_is_one_line(tmp_path, capsys):
    """A device this machine lacks is a bad option: status 2 and one message, before anything loads."""
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    argv = ["cka", "--source-model", str(tmp_path), "--target-model", str(tmp_path), "--texts", str(texts)]
    with pytest.raises(SystemExit) as exit_info:
        stitch.cli.main([*argv, "--out", str(tmp_path / "o"), "--device", "cuda:7"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--device: 'cuda:7' is not available here; available devices: ['cpu'" in err
    assert "Traceback" not in err and "AssertionError" not in err


# ---- item 12: missing paths, undecodable files, overflowing fits ----------------------------------------


@pytest.mark.parametrize("path", ["/no/such/model-dir", "./no-such-dir", "../elsewhere/model"])
def test_a_missing_local_directory_is_named(path):
    with pytest.raises(FileNotFoundError, match=r"model: no such directory"):
        stitch.load_model(path)


def test_a_non_utf8_text_file_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"--texts: '.*latin1.txt' is not UTF-8 text: byte 0xe9 at offset 14 \(line 2\)"
    ):
        read_texts("texts", str(bad))


@pytest.mark.parametrize("kind", ["affine", "procrustes", "linear"])
def test_fits_on_values_near_1e160_are_a_clear_error(kind):
    x = torch.randn(16, 4, dtype=torch.float64) * 1e160
    y = torch.randn(16, 4, dtype=torch.float64)
    cls = stitch.adapters.adapter_class(kind)
    with pytest.raises(ValueError, match=r"x: products of the values overflow float64.*rescale"):
        cls.fit(x, y)
    with pytest.raises(ValueError, match=r"y: products of the values overflow float64"):
        cls.fit(y, x)


def test_warmup_longer_than_an_epoch_run_is_refused_before_training(llama, texts, tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), source_layer=1, epochs=1, batch_size=2, warmup=50)
    with pytest.raises(ValueError, match=r"warmup: 50 steps is longer than the run's 2 steps"):
        stitch.train_adapter(llama, llama, texts, config)
    assert not (tmp_path / "run" / "checkpoints").exists()
