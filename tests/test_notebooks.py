"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, offline, on tiny models.

    python -m pytest tests/test_notebooks.py

The kernel is ipykernel's built-in "python3" spec (jupyter_client falls back to it when no kernelspec
is installed, and runs it with this interpreter), so nothing has to be installed for the test to run.
It starts in a temporary directory with the repository on PYTHONPATH, so the notebooks read the
checked-out code and write nowhere inside the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell; the walkthrough as a whole takes a few seconds
# files each notebook must leave in its temporary directory (where tempfile puts them: TMPDIR is the test's)
ARTIFACTS = {
    "walkthrough.ipynb": ["stitch-walkthrough-*/procrustes.safetensors", "stitch-walkthrough-*/report.html"],
}


def kernel_env(tmp: Path) -> dict[str, str]:
    """This process's environment, offline, temporary files under `tmp`, the repository importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    # outputs (embedded plotly.js, tensors) would bloat every diff; run the notebook to see them
    cells = json.loads(path.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=kernel_env(tmp_path))  # raises CellExecutionError (with the traceback) on any error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    for pattern in ARTIFACTS.get(path.name, []):
        assert list(tmp_path.glob(pattern)), f"{path.name} did not write {pattern}"
