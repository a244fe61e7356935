"""The demo (--quick) runs end to end on models it trains and caches, and its report is a complete record."""

import json

import pytest

from stitch.cli import demo as demo_module
from stitch.cli import demo_talk
from stitch.cli.demo import DemoConfig, run_demo
from stitch.cli.main import main
from stitch.zoo import PAIRS, cache_key, cache_root, demo_corpus, demo_pair, model_dir

SECTIONS = ["Models on held-out text", "Self-stitch identity", "Corpus", "Token alignment over", "Token alignment of",
            "Linear CKA", "random-init control", "Layer sweep", "every position class", "Adapter training",
            "Generations: B reading A", "Activation communication", "Communication scores",
            "Communication: one passage"]
HOSTILE = "<script>alert(1)</script> <!-- x \u2028 y"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &lt;!-- x &#x2028; y"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_cache):
    """The quick demo with hostile text in the models' names, a config value and the generation prompts."""
    cache = demo_cache
    out = tmp_path_factory.mktemp("demo")
    hostile_cache = tmp_path_factory.mktemp("c") / HOSTILE  # a config value: a directory whose name is hostile
    hostile_cache.parent.mkdir(parents=True, exist_ok=True)
    hostile_cache.symlink_to(cache, target_is_directory=True)

    def named_pair(*args, **kwargs):
        A, B, infos = demo_pair(*args, **kwargs)
        A.name, B.name = f"A {HOSTILE}", f"B {HOSTILE}"
        return A, B, infos

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_module, "demo_pair", named_pair)
        patch.setattr(demo_talk, "generation_prompts", lambda texts, n: [f"def f(): {HOSTILE}", texts[0][:30]][:n])
        result = run_demo(DemoConfig(out=str(out), quick=True, cache_dir=str(hostile_cache), progress=False))
    return result, out, cache


def sections_of(html: str) -> dict[str, str]:
    parts = html.split("<h2>")[1:]
    return {part[: part.index("</h2>")]: part for part in parts}


def test_quick_demo_writes_a_report_with_every_section_and_the_header(demo, capsys):
    result, out, _ = demo
    html = result["report"].read_text()
    titles = list(sections_of(html))
    for title in SECTIONS + ["Summary", "Run"]:
        assert any(t.startswith(title) or title in t for t in titles), title
    for title in ("Configuration", "Definitions", "loss recovered", "CE context-free"):
        assert title in html, title
    for fact in ("llama", "mistral", "sentencepiece_bpe", "byte_bpe", "torch", "transformers", "git commit", "cpu_<wbr>count"):
        assert fact in html, fact
    # alignment, CKA and its excess over the control, sweep, training, communication heatmap
    assert html.count('class="plotly-graph-div"') == 6
    run = json.loads((out / "run.json").read_text())
    assert [m["family"] for m in run["header"]["models"]] == ["llama", "mistral"]
    assert run["header"]["models"][0]["vocabulary"] > run["header"]["models"][1]["vocabulary"]
    assert set(result["checks"]) == {"models beat their unigram", "trained adapter recovers ≥ 0.8"}
    for name in ("train/metrics.jsonl", "sweep/records.json", "generate/samples.json", "communicate/records.jsonl",
                 "communicate/summary.json"):
        assert (out / name).is_file(), name


def test_generations_and_communication_have_their_columns_and_controls(demo):
    _, out, _ = demo
    samples = json.loads((out / "generate" / "samples.json").read_text())
    assert {"prompt", "A alone", "B alone", "spliced, prompt", "spliced, restitch", "inputs_embeds, prompt",
            "inputs_embeds, restitch"} <= set(samples[0])
    rows = json.loads((out / "communicate" / "summary.json").read_text())
    assert {r["condition"] for r in rows} == {"activation", "random", "none", "a_context", "natural_language"}
    assert {(r["k"], r["j"]) for r in rows if r["condition"] == "activation"} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert all(0 <= r["low"] <= r["mean"] <= r["high"] <= 1 for r in rows)


def test_hostile_names_config_values_and_generations_appear_escaped(demo):
    result, _, _ = demo
    html = result["report"].read_text()
    ours = html[html.index("</script>") + len("</script>"):]  # after the inlined plotly.js: everything is ours
    assert "<script>alert" not in html and "<!--" not in ours and "\u2028" not in ours
    assert ours.count("<script") == ours.count("</script>") == html.count('class="plotly-graph-div"')
    sections = sections_of(html)
    run = sections["Run"]
    assert f"A {ESCAPED}" in run and f"B {ESCAPED}" in run  # the models table
    assert ESCAPED in run.split("Configuration", 1)[1]  # the config value (cache_dir)
    generations = next(v for k, v in sections.items() if k.startswith("Generations"))
    # generated text shows control characters as escapes (U+2028 as the six characters \u2028), then HTML-escaped
    assert "def f(): &lt;script&gt;alert(1)&lt;/script&gt; &lt;!-- x \\u2028 y" in generations
    identity = sections["Self-stitch identity"]
    assert f"A {ESCAPED}" in identity


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
    A, B, infos = demo_pair(quick=True, cache_dir=cache, progress=False)
    assert not infos["A"]["built"] and not infos["B"]["built"]  # read back, not trained again
    changed = PAIRS["quick"][0].__class__.from_dict({**PAIRS["quick"][0].to_dict(), "steps": 41})
    assert cache_key(changed, corpus) != cache_key(PAIRS["quick"][0], corpus)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    monkeypatch.delenv("STITCH_CACHE_DIR", raising=False)
    assert str(cache_root()) == "/somewhere/stitch"
    monkeypatch.setenv("STITCH_CACHE_DIR", "/elsewhere")
    assert str(cache_root()) == "/elsewhere" and str(cache_root("/given")) == "/given"
