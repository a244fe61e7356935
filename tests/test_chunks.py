"""Long texts: chunks cut at the same characters for both tokenizers; chunked results (fits, CKA, training)
equal each chunk alone."""

import pytest
import torch

import stitch
from analyses.layer_similarity import layer_similarity
from stitch.chunks import chunk_texts
from stitch.testing import CORPUS
from tests.tiny import byte_bpe_tokenizer, tiny_model

N_CTX = 64


@pytest.fixture(scope="module")
def two():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), n_ctx=N_CTX), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("mistral", vocab_size=len(tok_b), n_ctx=N_CTX, seed=1), tokenizer=tok_b)
    return A, B


@pytest.fixture(scope="module")
def long_text(two):
    A, _ = two
    text = " ".join(CORPUS[:6] * 4)
    assert len(A.encode(text, overflow="truncate", max_length=10**6).input_ids[0]) >= 10 * N_CTX
    return text


def test_chunks_cover_the_text_and_fit_both_tokenizers(two, long_text):
    A, B = two
    chunks = chunk_texts([long_text], [A.tokenizer, B.tokenizer], N_CTX)
    assert "".join(c.text for c in chunks) == long_text and len(chunks) >= 10
    for c in chunks:
        assert long_text[c.start : c.start + len(c.text)] == c.text and c.context == 0
        for model in (A, B):
            assert model.encode(c.text).shape[1] <= N_CTX
        # byte-exact at both ends: each tokenization covers exactly the chunk's bytes, and ends where it ends
        al = stitch.TokenAlignment.build(c.text, A.tokenizer, B.tokenizer)
        n_bytes = len(c.text.encode("utf-8"))
        assert al.source_byte_spans[:, 1].max() == al.target_byte_spans[:, 1].max() == n_bytes


def test_stride_repeats_context(two, long_text):
    A, B = two
    chunks = chunk_texts([long_text], [A.tokenizer, B.tokenizer], N_CTX, stride=8)
    assert all(c.context > 0 for c in chunks[1:]) and chunks[0].context == 0
    for prev, c in zip(chunks, chunks[1:], strict=False):
        assert c.start == prev.start + len(prev.text) - c.context  # it starts `context` characters back
    assert all(B.encode(c.text).shape[1] <= N_CTX for c in chunks)
    with pytest.raises(ValueError, match=r"stride: expected an integer in \[0, 32\)"):
        chunk_texts([long_text], [A.tokenizer], N_CTX, stride=40)


def test_encode_chunks_or_truncates(two, long_text):
    A, _ = two
    with pytest.raises(ValueError, match=r"texts\[0\]: \d+ tokens exceed the model's 64 positions"):
        A.encode([long_text])
    chunked = A.encode([long_text, "short"], overflow="chunk")
    chunks = [c.text for c in chunk_texts([long_text], [A.tokenizer], N_CTX)]
    assert chunked.texts == [*chunks, "short"]
    alone = [A.logits(A.encode(c)) for c in chunks]
    together = A.logits(chunked)
    for row, logits in enumerate(alone):  # each chunk gives what it gives on its own
        torch.testing.assert_close(together[row, : logits.shape[1]], logits[0], rtol=0, atol=1e-5)
    full = A.encode([long_text], overflow="truncate", max_length=10**6)
    cut = A.encode([long_text], overflow="truncate")
    assert torch.equal(cut.input_ids[0], full.input_ids[0, :N_CTX])
    with pytest.raises(ValueError, match=r"overflow: 'drop' is not one of"):
        A.encode([long_text], overflow="drop")


def test_corpus_calls_take_max_length(two, long_text):
    A, B = two
    chunks = [c.text for c in chunk_texts([long_text], [A.tokenizer, B.tokenizer], N_CTX)]
    kwargs = dict(kind="affine", ridge=1e-3, batch_size=4, progress=False)
    chunked = stitch.fit_adapter(A, B, [long_text], 2, 1, max_length=N_CTX, **kwargs)
    separate = stitch.fit_adapter(A, B, chunks, 2, 1, **kwargs)
    torch.testing.assert_close(chunked.weight, separate.weight)
    rec = layer_similarity(A, B, [long_text], pairing="shared", max_length=N_CTX)
    ref = layer_similarity(A, B, chunks, pairing="shared")
    torch.testing.assert_close(rec.matrix, ref.matrix)
    assert rec.n == ref.n
    with pytest.raises(ValueError, match=r"max_length: expected an integer >= 2"):
        stitch.fit_adapter(A, B, [long_text], 2, max_length=0, **kwargs)


def test_train_adapter_takes_max_length(two, long_text, tmp_path):
    A, B = two
    chunks = [c.text for c in chunk_texts([long_text], [A.tokenizer, B.tokenizer], N_CTX, stride=4)]
    base = dict(source_layer=1, kind="affine", steps=3, batch_size=2, lr=1e-2, progress=False, eval_every=3)
    with pytest.raises(ValueError, match="tokens exceed"):  # 10x the context, whole: refused
        stitch.train_adapter(A, B, [long_text], stitch.TrainConfig(out=str(tmp_path / "whole"), **{**base, "batch_size": 1}))
    cut = stitch.train_adapter(A, B, [long_text], stitch.TrainConfig(out=str(tmp_path / "kw"), **base),
                               eval_texts=[long_text], max_length=N_CTX, stride=4)  # fmt: skip
    config = stitch.TrainConfig(out=str(tmp_path / "cfg"), max_length=N_CTX, stride=4, **base)
    in_config = stitch.train_adapter(A, B, [long_text], config, eval_texts=[long_text])
    separate = stitch.train_adapter(A, B, chunks, stitch.TrainConfig(out=str(tmp_path / "sep"), **base), eval_texts=chunks)
    for run in (cut, in_config):
        torch.testing.assert_close(run.adapter.weight, separate.adapter.weight, rtol=0, atol=0)
        assert run.last_eval["tokens"] == separate.last_eval["tokens"]
    assert (cut.adapter.weight - torch.eye(32)).abs().max() > 1e-4  # it trained
    with pytest.raises(ValueError, match="max_length: 32 .* the config already has max_length=64"):
        stitch.train_adapter(A, B, [long_text], config, max_length=32)
