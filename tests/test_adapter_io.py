"""save_adapter / load_adapter: exact round trips, metadata, atomic writes, refusal of bad files."""

import importlib.metadata
import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from stitch.adapters import (
    ADAPTERS,
    MLP,
    Affine,
    Identity,
    Procrustes,
    build_adapter,
    load_adapter,
    read_adapter_record,
    save_adapter,
)
from stitch.adapters import io as adapter_io


def randomised(kind, d_source=6, d_target=9, dtype=torch.float32):
    """An adapter of `kind` whose every parameter is random (so a round trip cannot pass by init)."""
    if kind == "identity":
        return Identity()
    extra = {
        "lowrank": {"rank": 2, "scale": 0.5, "bias": True},
        "procrustes": {"scale": True, "translation": True},
        "projection": {"bias": True},
    }.get(kind, {})
    ad = build_adapter(kind, d_source=d_source, d_target=d_target, **extra).to(dtype)
    with torch.no_grad():
        for p in ad.parameters():
            p.copy_(torch.randn_like(p))
    return ad


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_round_trip_is_exact(tmp_path, kind, dtype):
    ad = randomised(kind, dtype=dtype)
    path = save_adapter(ad, tmp_path / "a.safetensors")
    back = load_adapter(path)
    assert type(back) is type(ad) and back.config() == ad.config()
    assert (back.d_source, back.d_target) == (ad.d_source, ad.d_target)
    for (name, p), (name2, q) in zip(ad.state_dict().items(), back.state_dict().items(), strict=True):
        assert name == name2 and q.dtype == p.dtype and torch.equal(p, q), name
    x = torch.randn(3, 4, ad.d_source or 6, dtype=dtype)
    assert torch.equal(ad(x), back(x))
    assert all(p.requires_grad for p in back.parameters())


def test_metadata_versions_and_sidecar_json(tmp_path):
    ad = Procrustes.fit(torch.randn(50, 4, dtype=torch.float64), torch.randn(50, 4, dtype=torch.float64))
    meta = {
        "source_layer": 3,
        "target_layer": 5,
        "source_model": "tiny-a",
        "target_model": "tiny-b",
        "alignment": "target",
        "layers": [3, 5],
    }
    path = save_adapter(ad, tmp_path / "run", **meta)
    assert path == tmp_path / "run" / "adapter.safetensors"
    record = read_adapter_record(tmp_path / "run")
    assert record["metadata"] == meta and record["kind"] == "procrustes"
    assert (record["d_source"], record["d_target"], record["n_parameters"]) == (4, 4, 16)
    assert record["versions"]["torch"] == importlib.metadata.version("torch")
    assert set(record["versions"]) >= {"stitch", "torch", "safetensors", "transformers"}
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text()) == record
    assert torch.equal(load_adapter(tmp_path / "run").weight, ad.weight)


def test_non_json_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\['tensor'\]"):
        save_adapter(Affine(3), tmp_path / "a.safetensors", tensor=torch.ones(2))
    assert not any(tmp_path.iterdir())


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    first = randomised("affine")
    save_adapter(first, path)
    before = path.read_bytes()

    def exploding_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io.os, "replace", exploding_replace)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(randomised("affine"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old adapter survives a failed save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]
    assert torch.equal(load_adapter(path).weight, first.weight)


def test_truncated_file_is_refused(tmp_path):
    path = save_adapter(randomised("mlp"), tmp_path / "a.safetensors")
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20, 5, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            load_adapter(path)


def test_pickle_and_torch_save_files_are_refused(tmp_path):
    ad = randomised("affine")
    torch.save(ad.state_dict(), tmp_path / "torch.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps(ad.state_dict()))
    for name in ("torch", "pickle"):
        with pytest.raises(ValueError, match="pickle"):
            load_adapter(tmp_path / f"{name}.safetensors")


def test_header_length_that_looks_like_a_pickle_opcode_still_loads(tmp_path):
    # the first byte of a safetensors file is the low byte of its header length: it can be 0x80
    path = tmp_path / "a.safetensors"
    for k in range(256):
        save_adapter(Identity(5), path, pad="x" * k)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_adapter(path).d_source == 5


def write_raw(path, tensors, record):
    path.write_bytes(safetensors.torch.save(tensors, metadata={"stitch_adapter": json.dumps(record)}))


def test_wrong_shapes_unknown_kinds_and_foreign_files_are_refused(tmp_path):
    ad = randomised("affine", 4, 4)
    record = adapter_io.adapter_record(ad, {})
    path = tmp_path / "a.safetensors"
    write_raw(path, dict(ad.state_dict()), {**record, "config": {"d_source": 8, "d_target": 4}})
    with pytest.raises(ValueError, match=r"'weight' has shape \(4, 4\).*needs \(4, 8\)"):
        load_adapter(path)
    write_raw(path, dict(ad.state_dict()), {**record, "kind": "rotation"})
    with pytest.raises(ValueError, match="unknown adapter kind 'rotation'.*affine"):
        load_adapter(path)
    write_raw(path, {"weight": ad.weight.detach()}, record)
    with pytest.raises(ValueError, match=r"tensors \['weight'\] do not match"):
        load_adapter(path)
    write_raw(path, dict(ad.state_dict()), {**record, "format_version": 99})
    with pytest.raises(ValueError, match="upgrade stitch"):
        load_adapter(path)
    safetensors.torch.save_file(dict(ad.state_dict()), path)
    with pytest.raises(ValueError, match="without a stitch adapter config"):
        load_adapter(path)


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_adapter(path)
    path.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        load_adapter(path)
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapter(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="adapter must be"):
        save_adapter(torch.nn.Linear(2, 2), path)


def test_loaded_mlp_keeps_training_mode_semantics(tmp_path):
    ad = randomised("mlp")
    back = load_adapter(save_adapter(ad, tmp_path / "m"))
    assert isinstance(back, MLP) and back.norm is not None
    back(torch.randn(2, 6)).sum().backward()
    assert back.up.weight.grad is not None
