"""The demo (--quick) runs end to end on models it trains and caches, and its report is a complete record."""

import json

import pytest

from stitch.cli.demo import DemoConfig, run_demo
from stitch.cli.main import main
from stitch.zoo import PAIRS, cache_key, cache_root, demo_corpus, model_dir

SECTIONS = ["Models on held-out text", "Self-stitch identity", "Corpus", "Token alignment over", "Token alignment of",
            "Linear CKA", "random-init control", "Layer sweep", "every position class", "Adapter training"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_cache):
    cache = demo_cache
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(DemoConfig(out=str(out), quick=True, cache_dir=str(cache), progress=False))
    return result, out, cache


def test_quick_demo_writes_a_report_with_every_section_and_the_header(demo, capsys):
    result, out, _ = demo
    html = result["report"].read_text()
    for title in SECTIONS + ["Summary", "Run", "Configuration", "Definitions", "loss recovered", "CE context-free"]:
        assert title in html, title
    for fact in ("llama", "mistral", "sentencepiece_bpe", "byte_bpe", "torch", "transformers", "git commit", "cpu_<wbr>count"):
        assert fact in html, fact
    assert html.count('class="plotly-graph-div"') == 5  # alignment, CKA and its excess over the control, sweep, training
    run = json.loads((out / "run.json").read_text())
    assert [m["family"] for m in run["header"]["models"]] == ["llama", "mistral"]
    assert run["header"]["models"][0]["vocabulary"] > run["header"]["models"][1]["vocabulary"]
    assert set(result["checks"]) == {"models beat their unigram", "trained adapter recovers ≥ 0.8"}
    assert (out / "train" / "metrics.jsonl").is_file() and (out / "sweep" / "records.json").is_file()


def test_the_report_is_rebuilt_from_the_records_alone(demo, tmp_path):
    result, out, _ = demo
    assert main(["report", str(out), "--out", str(tmp_path / "again.html")]) == 0
    again, first = (tmp_path / "again.html").read_text(), result["report"].read_text()
    assert again == first  # nothing in the report comes from outside the run directory


def test_models_are_cached_by_key_and_reused(demo, monkeypatch):
    result, _, cache = demo
    corpus = demo_corpus(quick=True)
    for spec in PAIRS["quick"]:
        assert (model_dir(spec, corpus, cache) / "info.json").is_file()
    assert not [p for p in cache.rglob(".*") if "tmp" in p.name]  # no half-written directory left behind
    from stitch.zoo import demo_pair

    A, B, infos = demo_pair(quick=True, cache_dir=cache, progress=False)
    assert not infos["A"]["built"] and not infos["B"]["built"]  # read back, not trained again
    changed = PAIRS["quick"][0].__class__.from_dict({**PAIRS["quick"][0].to_dict(), "steps": 41})
    assert cache_key(changed, corpus) != cache_key(PAIRS["quick"][0], corpus)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    monkeypatch.delenv("STITCH_CACHE_DIR", raising=False)
    assert str(cache_root()) == "/somewhere/stitch"
    monkeypatch.setenv("STITCH_CACHE_DIR", "/elsewhere")
    assert str(cache_root()) == "/elsewhere" and str(cache_root("/given")) == "/given"
