"""Execute one notebook top to bottom in a fresh kernel, offline, on tiny models, and store the executed copy.

    python -m tests.run_notebook notebooks/01_quickstart.ipynb OUT.ipynb TMPDIR

What tests/test_notebooks.py checks: it runs this in the background (tests/background.py) and asserts on
OUT.ipynb and TMPDIR. The kernel is ipykernel's built-in "python3" spec (jupyter_client falls back to it when
no kernelspec is installed, and runs it with this interpreter), so nothing has to be installed. It starts in
TMPDIR with the repository on PYTHONPATH and STITCH_NOTEBOOK_TINY=1 (tiny models built in the first cell), so
the notebook reads the checked-out code and writes nowhere inside the repository. Exits 1 with the failing
cell's traceback on stderr if any cell raises.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 120  # seconds per cell; each notebook takes a few seconds beyond kernel start and imports


def kernel_env(tmp: Path) -> dict[str, str]:
    """This process's environment, offline, tiny models, temporary files under `tmp`, the repository importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", TMPDIR=str(tmp),
               STITCH_NOTEBOOK_TINY="1")
    env.pop("STITCH_NOTEBOOK_PLOTLYJS", None)  # the default: plotly.js inlined once
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def execute(path: Path, out: Path, tmp: Path) -> None:
    """Run `path` from a clean slate (not from its stored outputs) in `tmp`; write the executed notebook to `out`."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", store_widget_state=False,
                                     resources={"metadata": {"path": str(tmp)}})
    client.execute(env=kernel_env(tmp))  # raises CellExecutionError (with the traceback) on any error
    nbformat.write(nb, out)


if __name__ == "__main__":
    try:
        execute(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    except nbclient.exceptions.CellExecutionError as err:
        sys.exit(f"{sys.argv[1]}: {err}")
