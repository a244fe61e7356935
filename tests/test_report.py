"""The HTML report is self-contained, escapes text, and is written atomically."""

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
