"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, offline, on tiny models, and its HTML
export draws its figures without the network.

    python -m pytest tests/test_notebooks.py

Each notebook is executed by tests/run_notebook.py (its own process, its own fresh kernel; see there for the
kernel's environment: the repository on PYTHONPATH, STITCH_NOTEBOOK_TINY=1, a temporary directory as cwd and
TMPDIR, so nothing is written inside the repository). The session starts those runs in the background when it
starts (tests/conftest.py, tests/background.py) so that kernel start and imports overlap the rest of the suite;
each test waits for its notebook's run and checks the executed copy it stored.
The widget state of progress bars is not stored (JupyterLab's default too): stored, nbconvert's HTML export
would load its widget manager from a CDN.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")  # tqdm.auto draws widgets with it; without it tqdm warns (TqdmWarning)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# per notebook: figures it must draw (at least), and files it must leave where tempfile puts them (TMPDIR)
EXPECTED = {
    "01_quickstart.ipynb": (2, ["stitch-quickstart-*/procrustes.safetensors", "stitch-quickstart-*/report.html"]),
    "02_cka.ipynb": (4, []),
    "03_token_alignment.ipynb": (2, []),
    "04_training_an_adapter.ipynb": (2, ["stitch-train-*/run/metrics.jsonl"]),
    "05_generation_and_communication.ipynb": (1, []),
}
PLOTLYJS_BANNER = re.compile(r"\* plotly\.js v\d+\.\d+\.\d+")
REMOTE = re.compile(r"""<script[^>]*\ssrc=["']?((?:https?:)?//[^"'\s>]+)""", re.I)
COMMITTED_MAX_BYTES = 400_000  # outputs without plotly.js: text, tables and figure data only


def figure_outputs(nb) -> list[str]:
    """The text/html of every plotly figure the notebook displayed."""
    return [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "Plotly.newPlot(" in o.get("data", {}).get("text/html", "")]


def test_the_five_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED), f"notebooks/ holds {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_shows_outputs_and_stays_small(path):
    # a reader on GitHub sees the outputs of a full run; plotly.js (~5 MB) is left out of the stored copy
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c.get("execution_count") is not None and c.get("outputs") is not None for c in code)
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{path.name} was committed with an error"
    text = path.read_text()
    assert "mode: full" in text, f"{path.name}: the stored outputs are not from a full-mode run"
    assert not PLOTLYJS_BANNER.search(text), f"{path.name} stores plotly.js; run it with STITCH_NOTEBOOK_PLOTLYJS=none"
    assert path.stat().st_size < COMMITTED_MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_its_html_export_draws_its_figures_offline(path, notebook_runs):
    run = notebook_runs(path)  # executed from a clean slate (not from the stored outputs) in a fresh kernel
    assert run.done.returncode == 0, f"{path.name}:\n{run.done.stdout[-4000:]}\n{run.done.stderr[-4000:]}"
    nb, tmp_path = nbformat.read(run.executed, as_version=4), run.tmp
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr (warnings, text progress bars): {stderr}"
    n_figures, artifacts = EXPECTED[path.name]
    for pattern in artifacts:
        assert list(tmp_path.glob(pattern)), f"{path.name} did not write {pattern}"

    figures = figure_outputs(nb)
    assert len(figures) >= n_figures, f"{path.name}: {len(figures)} figures, expected at least {n_figures}"
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    assert len(PLOTLYJS_BANNER.findall(html)) == 1, "plotly.js must be inlined exactly once"
    assert html.count("Plotly.newPlot(") == len(figures)
    flat = " ".join(html.split())  # nbconvert re-spaces the markup between tags
    titles = {_title(call) for call in re.findall(r"Plotly\.newPlot\((.*?)\)\s*\};", html, re.S)}
    for fig in figures:  # each figure: its div, its Plotly.newPlot call with its data and layout, its title
        assert "not stored in this copy" not in fig
        div, call = re.search(r'<div id="([^"]+)" class="plotly-graph-div".*?Plotly\.newPlot\((.*?)\)\s*\};', fig,
                              re.S).groups()
        assert f'id="{div}"' in html and " ".join(call.split()) in flat
        assert _title(call) and _title(call) in titles  # a known value, read back from the export
    # nothing the notebook displayed loads a script from the network; the export's only remote scripts are
    # nbconvert's template's own (require.js, MathJax), which the figures do not use
    assert not [url for f in figures for url in REMOTE.findall(f)]
    exporter = nbconvert.HTMLExporter()
    template_own = {exporter.require_js_url.split("?")[0], exporter.mathjax_url.split("?")[0]}
    assert {url.split("?")[0] for url in REMOTE.findall(html)} <= template_own


def _title(newplot_arguments: str) -> str:
    """The layout title of a `Plotly.newPlot(id, data, layout, config)` call's arguments."""
    layout = re.search(r"\],\s*(\{.*\}),\s*\{\"responsive\"", newplot_arguments, re.S).group(1)
    return json.loads(layout)["title"]["text"]
