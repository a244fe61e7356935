"""Activation stores: a batch read back is the batch the models give; on-disk shards round-trip; a stale or
altered store is refused with the reason; fits and CKA read a store and agree with the models' path."""

import json

import pytest
import torch

import stitch
from analyses.cka import linear_cka
from stitch.activations import (
    StaleStoreError,
    cached_activations,
    collect_activations,
    open_store,
    store_identity,
)
from stitch.adapters.fit import fit_adapter, fit_from_store
from stitch.alignment.pairing import pair_texts
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model

TEXTS = list(dict.fromkeys(CORPUS))


@pytest.fixture(scope="module")
def models():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(280)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), seed=1), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("llama", vocab_size=len(tok_b), seed=2), tokenizer=tok_b)
    return A, B


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_stored_batch_is_what_the_models_give(models, tmp_path, on_disk):
    A, B = models
    path = tmp_path / "store" if on_disk else None
    store = collect_activations(
        A, B, TEXTS, [1, 2], [2], native_logits=True, path=path, batch_size=4, shard_texts=4
    )
    if on_disk:
        assert sorted(p.name for p in path.iterdir()) == [
            "manifest.json",
            "shard-00000.safetensors",
            "shard-00001.safetensors",
            "texts.json",
        ]
        store = open_store(path)
    picked = [5, 0, 3]
    got = store.batch(picked)
    want = pair_texts(A, B, [TEXTS[i] for i in picked])
    for side in ("source", "target"):
        for key, value in getattr(want, side).tensors().items():
            assert torch.equal(getattr(getattr(got.pairing, side), key), value), (side, key)
    assert torch.equal(got.pairing.target_to_source, want.target_to_source)
    assert got.pairing.target.tokenizer_fingerprint == want.target.tokenizer_fingerprint is not None
    assert torch.equal(got.pairing.source_labels, want.source_labels)
    real_a, real_b = want.source.attention_mask.bool(), want.target.attention_mask.bool()
    torch.testing.assert_close(
        got.source[1][real_a], A.residuals(want.source, [1])[1][real_a], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        got.target[2][real_b], B.residuals(want.target, [2])[2][real_b], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(got.logits[real_b], B.logits(want.target)[real_b], atol=1e-5, rtol=0)


def test_stale_or_altered_stores_are_refused_with_the_reason(models, tmp_path):
    A, B = models
    path = tmp_path / "store"
    cached_activations(path, A, B, TEXTS, [1], [1])
    assert len(cached_activations(path, A, B, TEXTS, [1], [1])) == len(TEXTS)  # reused as is
    with pytest.raises(StaleStoreError, match=r"source_layers: \[2\] not stored"):
        cached_activations(path, A, B, TEXTS, [2], [1])
    with pytest.raises(StaleStoreError, match="built on other texts"):
        cached_activations(path, A, B, TEXTS[:3], [1], [1])
    other = stitch.load_model(tiny_model("llama", vocab_size=len(A.tokenizer), seed=9), tokenizer=A.tokenizer)
    with pytest.raises(StaleStoreError, match="source_model weights_sha256"):
        cached_activations(path, other, B, TEXTS, [1], [1])  # the same config, other weights
    with pytest.raises(StaleStoreError, match="target_model config_sha256"):
        cached_activations(path, A, A, TEXTS, [1], [1])
    with pytest.raises(StaleStoreError, match="native logits are needed"):
        open_store(path, expect=store_identity(A, B, TEXTS, [1], [1], native_logits=True))
    shard = path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the states
    shard.write_bytes(bytes(data))
    with pytest.raises(StaleStoreError, match="shard-00000.safetensors is missing or changed"):
        open_store(path)
    (path / "manifest.json").unlink()
    with pytest.raises(StaleStoreError, match="no manifest.json"):
        open_store(path)


def test_fits_and_cka_read_a_store(models, tmp_path):
    A, B = models
    store = collect_activations(A, B, TEXTS, [1], [2], path=tmp_path / "s")
    from_models = fit_adapter(A, B, TEXTS, 1, 2, kind="affine", ridge=1e-3, progress=False)
    from_store = fit_from_store(store, 1, 2, kind="affine", ridge=1e-3)
    for key, value in from_models.state_dict().items():
        torch.testing.assert_close(from_store.state_dict()[key], value, atol=1e-5, rtol=0)
    x, y = store.paired(1, 2)
    pairing = pair_texts(A, B, TEXTS)
    rows, src, tgt = pairing.pairs()
    xa, yb = A.residuals(pairing.source, [1])[1][rows, src], B.residuals(pairing.target, [2])[2][rows, tgt]
    assert linear_cka(x, y) == pytest.approx(linear_cka(xa.detach(), yb.detach()), abs=1e-6)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (
        manifest["source_layers"] == [1]
        and manifest["target_layers"] == [2]
        and manifest["n_texts"] == len(TEXTS)
    )


def test_a_stored_batch_is_placed_as_the_live_path_places_it_when_a_and_b_sit_on_two_devices(models):
    """A's batch and states on A's device; B's batch, the pairing's index tensors, B's states and logits on
    B's ("meta" stands in for a second device: every tensor reports where it was sent)."""
    A, B = models
    store = collect_activations(A, B, TEXTS[:4], [1], [2], native_logits=True, batch_size=4)
    got = store.batch([2, 0], device=torch.device("cpu"), target_device=torch.device("meta"))
    p = got.pairing
    a_side = [*p.source.tensors().values(), got.source[1]]
    b_side = [*p.target.tensors().values(), p.target_to_source, p.source_labels, p.source_next, got.target[2],
              got.logits]
    assert {t.device.type for t in a_side} == {"cpu"}
    assert {t.device.type for t in b_side} == {"meta"}
    one = store.batch([2, 0], device=torch.device("cpu"))  # one device: everything there, as before
    assert {t.device.type for t in [*one.pairing.target.tensors().values(), one.target[2]]} == {"cpu"}
