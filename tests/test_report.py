"""The HTML report is self-contained, escapes text, and is written atomically."""

import json
import os
import re

import plotly.graph_objects as go
import pytest

from analyses.report import Section, render_report, write_report
from stitch.files import write_atomic


def figure():
    return go.Figure(go.Heatmap(z=[[1.0, 0.5], [0.5, 1.0]]), layout=dict(title="CKA"))


def test_report_is_self_contained(tmp_path):
    path = write_report(
        tmp_path / "r.html",
        [
            Section("CKA <A vs B>", figure(), note="n = 2"),
            Section("Sweep", [{"layer": 1, "loss": 0.123456, "adapter_kind": "affine"}]),
        ],
        title="demo",
    )
    text = path.read_text()
    assert "CKA &lt;A vs B&gt;" in text and "<td>0.1235</td>" in text and "n = 2" in text
    assert '<td class="text">affine</td>' in text and "<td>1</td>" in text  # text left, numbers right
    assert "adapter_<wbr>kind" in text and text.count('<div class="wide">') == 2  # wide content scrolls
    assert text.count("plotly.js v") <= 2 and len(text) > 1_000_000  # plotly.js inlined, once
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: every script is inline
    assert text.count('class="plotly-graph-div"') == 1


def test_bad_sections_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sections: expected at least one Section"):
        render_report([])
    with pytest.raises(TypeError, match=r"Section 'x': content must be a plotly Figure or a non-empty list"):
        render_report([Section("x", "not a figure")])
    assert not (tmp_path / "r.html").exists()


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = write_atomic(tmp_path / "f.txt", "old")

    with pytest.raises(TypeError):  # fails inside the write, after the temp file exists
        write_atomic(path, 12345)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temp file left behind


HOSTILE = "</script><script>alert(1)</script><!-- \u2028 & \"q\""


def test_hostile_text_is_escaped_everywhere(tmp_path):
    from analyses.report import Header

    header = Header(config={"out": HOSTILE}, models=({"name": HOSTILE, "layers": 2},), versions={"x": HOSTILE},
                    git_commit=HOSTILE, date=HOSTILE, hardware={"gpus": HOSTILE})
    fig = go.Figure(go.Scatter(x=[1], y=[2], name=HOSTILE), layout=dict(title=HOSTILE))
    text = render_report(
        [Section(HOSTILE, fig, note=HOSTILE, flags=(HOSTILE,)), Section("gen", [{"generation": HOSTILE}])],
        title=HOSTILE, header=header, summary=[{"metric": HOSTILE, "value": 1.0}],
    )
    bundle = text.index("</script>")  # the inlined plotly.js ends here; everything after is ours
    rest = text[bundle + len("</script>"):]
    assert "alert(1)" in rest and "<script>alert" not in text and "<!--" not in rest and "\u2028" not in rest
    assert rest.count("<script") == 1 and rest.count("</script>") == 1  # the figure's own script only
    assert "&lt;/script&gt;" in rest and "&#x2028;" in rest


def test_undefined_values_are_flagged_not_printed_as_numbers():
    text = render_report([Section("t", [{"loss recovered": float("nan"), "n": None, "ok": 0.5}])])
    assert text.count('class="flag"') == 2 and "NaN ⚠" in text and "<td>0.5</td>" in text


def test_plotlyjs_can_be_written_once_beside_several_reports(tmp_path):
    for name in ("a.html", "b.html"):
        write_report(tmp_path / name, [Section("CKA", figure())], plotlyjs="beside")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", "plotly.min.js"]
    text = (tmp_path / "a.html").read_text()
    assert '<script src="plotly.min.js"></script>' in text and len(text) < 100_000
    with pytest.raises(ValueError, match=r"plotlyjs: got 'cdn'; valid: \['inline', 'beside'\]"):
        render_report([Section("CKA", figure())], plotlyjs="cdn")


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    from stitch.files import atomic_directory

    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (tmp_path / "model" / "weights").read_text() == "whole"


def _communication_run(directory, hostile):
    """A `stitch communicate` run directory written by hand: 2 examples, text controls and a 2 × 1 grid."""
    from analyses.communication import summary_rows

    records = []
    for ex_id, said in [(hostile, hostile + "\nline two"), ("qa-1", "plain")]:
        base = {"id": ex_id, "task": "qa", "prompt_a": hostile, "b_input": "Q?\n" + hostile}
        records.append({**base, "condition": "none", "k": None, "j": None, "prediction": said,
                        "exact_match": 0.0, "f1": 0.0})
        records.append({**base, "condition": "natural_language", "k": None, "j": None, "a_said": hostile,
                        "prediction": said, "exact_match": 0.0, "f1": 0.5})
        for k, f1 in ((1, 0.25), (2, 0.75)):
            for condition in ("activation", "random"):
                records.append({**base, "condition": condition, "k": k, "j": 1, "prediction": f"{condition} {k}",
                                "exact_match": 0.0, "f1": f1 if condition == "activation" else 0.0})
    directory.mkdir()
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (directory / "summary.json").write_text(json.dumps(summary_rows(records, n_boot=50)), encoding="utf-8")
    return records


def test_communication_run_report_heatmap_intervals_and_escaped_exchanges(tmp_path):
    """`stitch report` of a communicate run: a heatmap, the summary with bootstrap intervals, and sample
    exchanges (every text control, activation and random at the best pair) with hostile text escaped."""
    from analyses.run_report import run_sections, write_run_report

    hostile = HOSTILE + " <!-- <script>x</script>"
    _communication_run(tmp_path / "comm", hostile)
    _, _, _, sections = run_sections(tmp_path / "comm")
    heat, table, samples = sections
    assert isinstance(heat.content, go.Figure) and [list(row) for row in heat.content.data[0].z] == [[0.25], [0.75]]
    assert "bootstrap" in table.title and all(r["low"] <= r["mean"] <= r["high"] for r in table.content)
    assert {(r["condition"], r["k"]) for r in table.content} >= {("none", "—"), ("activation", 1), ("activation", 2)}
    assert {(r["condition"], r["k"]) for r in samples.content} == {
        ("none", "—"), ("natural_language", "—"), ("activation", 2), ("random", 2)}  # best pair: k = 2
    assert any(r["prediction"] == hostile.replace("\u2028", "\\u2028") + "\\nline two" for r in samples.content)
    assert "Token alignment" not in " ".join(s.title for s in sections)  # summary.json is not an align table
    from stitch.cli.communicate import report_sections  # what a report embedding a communication run uses

    records = [json.loads(line) for line in (tmp_path / "comm" / "records.jsonl").read_text().splitlines()]
    embedded = report_sections(records, json.loads((tmp_path / "comm" / "summary.json").read_text()))
    assert [(s.title, s.content if isinstance(s.content, list) else None) for s in embedded] == \
        [(s.title, s.content if isinstance(s.content, list) else None) for s in sections]
    text = write_run_report(tmp_path / "comm").read_text(encoding="utf-8")
    rest = text[text.index("</script>") + len("</script>"):]  # after the inlined plotly.js: all ours
    assert "<script>alert" not in rest and "<script>x" not in rest and "<!--" not in rest and "\u2028" not in rest
    assert rest.count("<script") == 1  # the heatmap's own script only
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in rest and "\\nline two" in rest
