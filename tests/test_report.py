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
