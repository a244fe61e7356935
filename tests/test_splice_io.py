"""Whole splices on disk: `save_pretrained` / `from_pretrained` round trips give identical logits, models are
reloaded from their recorded identities or checked against them, no pickle is ever read, the hub path works
against a local directory standing in for the hub, and `stitch generate --splice` equals the library."""

import json
import pickle
import shutil

import pytest
import torch

import stitch
from stitch.cli.main import main
from stitch.cli.preflight import SPLICE_CONFIG
from stitch.splice import io
from stitch.testing import byte_bpe_tokenizer, tiny_model

TEXTS = ["The quick brown fox.", "Two models read the same text."]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Models a (width 32) and b (width 48, another tokenizer) saved to disk and loaded from there."""
    root = tmp_path_factory.mktemp("splice_io")
    toks = (byte_bpe_tokenizer(), byte_bpe_tokenizer(vocab_size=280, bos=False))
    for name, tok, layers, width, seed in (("a", toks[0], 2, 32, 0), ("b", toks[1], 3, 48, 1)):
        tiny_model("llama", len(tok), layers, width, seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    A, B = stitch.load_model(str(root / "a")), stitch.load_model(str(root / "b"))
    torch.manual_seed(0)
    adapter = stitch.adapters.Affine(32, 48)
    torch.nn.init.normal_(adapter.weight, std=0.2)
    splice = stitch.Splice(A, B, 1, 2, adapter=adapter)
    splice.save_pretrained(root / "splice")
    return root, A, B, splice


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_round_trip_reloads_the_models_and_gives_identical_logits(saved, no_pickle):
    root, A, B, splice = saved
    again = stitch.Splice.from_pretrained(root / "splice")  # A and B reloaded from their recorded paths
    assert again.A is not A and again.B is not B
    assert (again.source_layer, again.target_layer, again.alignment, again.injection) == (1, 2, "target", "residual")
    assert torch.equal(again(TEXTS).logits, splice(TEXTS).logits)
    given = stitch.Splice.from_pretrained(root / "splice", A=A, B=B)  # given models: used, after the check
    assert given.A is A and torch.equal(given(TEXTS).logits, splice(TEXTS).logits)


def test_the_record_names_everything_a_reload_needs(saved):
    root, A, _, _ = saved
    record = json.loads((root / "splice" / SPLICE_CONFIG).read_text())
    assert SPLICE_CONFIG == io.CONFIG_NAME
    assert {"source_layer", "target_layer", "alignment", "injection", "positions", "models", "versions"} <= set(record)
    identity = record["models"]["A"]
    assert identity["name_or_path"] == str(root / "a") and (identity["n_layers"], identity["d_model"]) == (2, 32)
    assert set(identity) >= {"revision", "config_hash", "tokenizer_hash", "weights_fingerprint"}
    assert sorted(p.name for p in (root / "splice").iterdir()) == ["adapter.safetensors", "adapter_config.json", SPLICE_CONFIG]


def test_mismatched_models_are_refused_with_the_difference(saved):
    root, A, B, _ = saved
    with pytest.raises(ValueError, match=r"A: model .* is not the model .*d_model: saved 32, given 48"):
        stitch.Splice.from_pretrained(root / "splice", A=B, B=B)
    other = stitch.load_model(tiny_model("llama", len(A.tokenizer), 2, 32, seed=5), tokenizer=A.tokenizer)
    with pytest.raises(ValueError, match="weights_fingerprint: saved") as info:
        stitch.Splice.from_pretrained(root / "splice", A=other)
    assert "config_hash" not in str(info.value)  # same architecture: only the weights differ
    in_bf16 = stitch.load_model(str(root / "a"), dtype=torch.bfloat16)  # another dtype is the same model
    io.check_identity("A", in_bf16, json.loads((root / "splice" / SPLICE_CONFIG).read_text())["models"]["A"])


def test_a_pickled_adapter_in_the_directory_is_refused(saved, tmp_path, no_pickle):
    root, A, B, _ = saved
    shutil.copytree(root / "splice", tmp_path / "sp")
    with open(tmp_path / "sp" / "adapter.safetensors", "wb") as f:
        f.write(pickle.dumps({"weight": [1.0] * 64}, protocol=4))  # written by us; never read back
    with pytest.raises(ValueError, match="never unpickles"):
        stitch.Splice.from_pretrained(tmp_path / "sp", A=A, B=B)


def test_push_to_hub_and_back_through_a_local_stand_in(saved, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    root, A, B, splice = saved
    hub = tmp_path / "hub"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, revision=None: str(hub / repo_id))
    assert splice.push_to_hub("user/a-to-b") == "user/a-to-b"
    again = stitch.Splice.from_pretrained("user/a-to-b", A=A, B=B)
    assert torch.equal(again(TEXTS).logits, splice(TEXTS).logits)


def test_cli_generate_with_a_saved_splice_equals_the_library(saved, capsys):
    root, _, _, splice = saved
    (root / "prompts.txt").write_text("\n".join(TEXTS) + "\n")
    argv = ["generate", "--splice", str(root / "splice"), "--prompts", str(root / "prompts.txt")]
    assert main([*argv, "--max-new-tokens", "3", "--no-progress"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["continuation"] for r in printed] == splice.generate(TEXTS, max_new_tokens=3)
    # a given model of another width: refused before anything loads, from the adapter's header and config.json
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--source-model", str(root / "b")])
    message = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2 and message.startswith(f"stitch generate: error: --splice: got {root / 'splice'}")
    assert "mapping widths 32 → 48; valid: 48 → 48, the d_model of --source-model" in message
    # a given model of the right width that is not the saved one: one line naming --splice and the difference
    other = root / "other_a"
    tiny_model("llama", len(splice.A.tokenizer), 2, 32, seed=5).save_pretrained(other)
    splice.A.tokenizer.save_pretrained(other)
    assert main([*argv, "--source-model", str(other)]) == 1
    assert "--splice: A: model" in capsys.readouterr().err


def test_positions_and_injection_round_trip(saved, tmp_path):
    root, A, B, splice = saved
    selective = stitch.Splice(A, B, 1, 2, adapter=splice.adapter, positions=[0, -1])
    selective.save_pretrained(tmp_path / "sel")
    again = stitch.Splice.from_pretrained(tmp_path / "sel", A=A, B=B)
    assert again.positions.label == selective.positions.label and again.combine.name == "replace"
    assert torch.equal(again(TEXTS).logits, selective(TEXTS).logits)
    masked = stitch.Splice(A, B, 1, 2, adapter=splice.adapter, positions=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions: a 'mask' selection fits one batch"):
        masked.save_pretrained(tmp_path / "masked")
