"""Training texts: JSONL with a chosen field, chunking with a stride at token boundaries, packing, the
`stitch train` options for them (checked before any model loads), and new training flags end to end."""

import json

import pytest
import yaml

import stitch
from stitch.alignment.spans import token_spans_batch
from stitch.cli import main
from stitch.cli.train import TrainCommandConfig
from stitch.data import chunk_texts, load_texts, pack_texts
from stitch.testing import CORPUS, byte_bpe_tokenizer, rotated_copy, tiny_model


@pytest.fixture(scope="module")
def model():
    tok = byte_bpe_tokenizer()
    return stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=1), tokenizer=tok)


def n_tokens(model, text):
    batch = model.encode([text])
    return int((~batch.special_mask[0] & batch.attention_mask[0].bool()).sum())


def test_jsonl_with_a_text_field(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(CORPUS[:3])) + "\n")
    assert load_texts(str(path), text_field="body") == CORPUS[:3]
    with pytest.raises(ValueError, match='line 1: expected an object with a non-empty "text" string'):
        load_texts(str(path))


def test_chunks_overlap_by_the_stride_and_fit(model):
    text = " ".join(CORPUS)
    [enc] = token_spans_batch(model.tokenizer, [text], False)
    spans = [s for s, special in zip(enc.spans, enc.special, strict=True) if not special]
    chunks = chunk_texts([text], model, max_tokens=20, stride=5)
    starts = list(range(0, len(spans), 15))
    starts = starts[: next(i for i, s in enumerate(starts) if s + 20 >= len(spans)) + 1]
    assert chunks == [text[spans[s][0] : spans[min(s + 20, len(spans)) - 1][1]] for s in starts]
    assert all(n_tokens(model, c) <= 22 for c in chunks)  # re-tokenized: about max_tokens
    assert chunk_texts(["short"], model, 20) == ["short"]
    packed = pack_texts(CORPUS, model, max_tokens=400)
    assert "\n\n".join(packed).replace("\n\n", "") == "".join(chunk_texts(CORPUS, model, 400))
    assert len(packed) < len(CORPUS)
    with pytest.raises(ValueError, match=r"stride: expected an integer in \[0, max_tokens=20\)"):
        chunk_texts([text], model, 20, stride=20)


def test_train_command_checks_window_options_before_loading():
    base = dict(source_model="a", target_model="b", train_texts="t.txt", out="o", source_layer=1)
    with pytest.raises(ValueError, match="max_tokens: --pack needs --max-tokens > 0"):
        TrainCommandConfig(**base, pack=True)
    with pytest.raises(ValueError, match="stride: expected an integer in"):
        TrainCommandConfig(**base, max_tokens=8, stride=9)


def test_stitch_train_with_objectives_layer_pairs_and_cache(tmp_path):
    tok = byte_bpe_tokenizer()
    hf = tiny_model("llama", vocab_size=len(tok), seed=5)
    for name, m in (("a", hf), ("b", rotated_copy(hf, seed=6)[0])):
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "t.txt").write_text("\n".join(t for t in CORPUS if "\n" not in t) + "\n")
    argv = ["train", "--source-model", str(tmp_path / "a"), "--target-model", str(tmp_path / "b"),
            "--train-texts", str(tmp_path / "t.txt"), "--eval-texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"),
            "--layer-pairs", "1:1", "2:1", "--objectives", "ce", "cosine:weight=0.5", "--cache", str(tmp_path / "cache"),
            "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--no-progress",
            "--samples", "2", "--sample-tokens", "3", "--max-tokens", "48", "--stride", "4"]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "run"
    assert (run / "pairs" / "1-1" / "adapter.safetensors").is_file() and (run / "pairs" / "2-1").is_dir()
    assert (run / "best" / "pairs" / "1-1" / "adapter.safetensors").is_file() and (
        run / "training.html"
    ).is_file()
    assert (tmp_path / "cache" / "manifest.json").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"1:1/ce", "2:1/cosine"} <= set(next(r for r in records if r["split"] == "train"))
    assert all("cka_after" in r for r in records if r["split"] == "eval")
    samples = [r for r in records if r["split"] == "samples"]
    assert [(r["step"], r["pair"], len(r["samples"])) for r in samples] == [(0, "1:1", 2), (0, "2:1", 2), (2, "1:1", 2), (2, "2:1", 2)]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [saved[k] for k in ("samples", "sample_tokens", "max_tokens", "max_length", "stride")] == [2, 3, 48, 48, 4]
    assert main(["report", str(run)]) == 0
    assert "generation samples" in (run / "report.html").read_text()
