import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.background import Background  # noqa: E402

# Property tests draw the same examples on every run, so CI is never red by the luck of a draw; explore
# locally with HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(1)  # tiny models: more threads only add contention on a busy 2-core machine

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Stitching splices the residual stream.",
    "Hi",
    "Tabs\tand\nnewlines, café 東京 🙂.",
]


@pytest.fixture(scope="session")
def texts():
    return list(TEXTS)


@pytest.fixture(scope="session")
def tok():
    from tests.tiny import byte_bpe_tokenizer

    return byte_bpe_tokenizer()


@pytest.fixture(scope="session")
def llama(tok):
    import stitch
    from tests.tiny import tiny_model

    return stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)


ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT = 600  # seconds: the first run trains the demo's tiny models into the session's cache
NOTEBOOK_TIMEOUT = 600  # seconds per notebook (120 per cell inside, see tests/run_notebook.py)


@dataclass(frozen=True)
class DemoRun:
    """The session's one `stitch demo --quick` run: `program` + `args` ran in `cwd`, wrote `out`, gave `done`."""

    program: list[str]
    args: list[str]
    cwd: Path
    out: Path
    done: object  # subprocess.CompletedProcess

    @property
    def console_script(self) -> bool:
        return len(self.program) == 1


@dataclass(frozen=True)
class NotebookRun:
    """One notebook executed by tests/run_notebook.py: the executed copy, its TMPDIR (and cwd), the process."""

    executed: Path
    tmp: Path
    done: object  # subprocess.CompletedProcess


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The slow subprocesses the selected tests need, queued now in the order the tests need them and run one
    at a time beside the suite (see tests/background.py)."""
    jobs, items = Background(), list(request.session.items)
    plan = {"cache": tmp_path_factory.mktemp("stitch-cache"), "notebooks": {}}
    if _wanted(items, "demo_run"):
        plan["demo"] = _queue_demo(jobs, plan["cache"], tmp_path_factory)
    for path in dict.fromkeys(item.callspec.params["path"] for item in _wanted(items, "notebook_runs")):
        plan["notebooks"][path] = _queue_notebook(jobs, path, tmp_path_factory)
    if _wanted(items, "readme_runs"):
        _queue_readme(jobs)
    yield jobs, plan
    jobs.close()


def _wanted(items, fixture: str) -> list:
    return [item for item in items if fixture in getattr(item, "fixturenames", ())]


def _queue_demo(jobs: Background, cache: Path, factory) -> tuple:
    exe = shutil.which("stitch")  # the console script, as the README runs it; else the module
    program = [exe] if exe else [sys.executable, "-m", "stitch.cli"]
    cwd, out = factory.mktemp("demo-cwd"), factory.mktemp("demo-run") / "demo"
    args = ["demo", "--quick", "--no-progress", "--cache-dir", str(cache), "--out", str(out)]
    # this checkout, whichever one the script was installed from; one thread: it runs beside the suite
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    jobs.submit("demo", program + args, cwd=cwd, env=env, timeout=DEMO_TIMEOUT)
    return program, args, cwd, out


def _queue_notebook(jobs: Background, path: Path, factory) -> NotebookRun:
    where = factory.mktemp(f"nb-{path.stem}")
    (where / "tmp").mkdir()
    argv = [sys.executable, "-m", "tests.run_notebook", str(path), str(where / "executed.ipynb"), str(where / "tmp")]
    jobs.submit(path.name, argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=NOTEBOOK_TIMEOUT)
    return NotebookRun(where / "executed.ipynb", where / "tmp", None)


def _queue_readme(jobs: Background) -> None:
    from tests.test_readme import checked, command_env, quickstart_commands  # the test's own definitions

    for block, commands in enumerate(quickstart_commands()):
        for i, argv in enumerate(commands):
            if argv[:2] != ["stitch", "demo"]:  # the demo is the demo run
                jobs.submit(f"readme {block} {i}", checked(argv), cwd=ROOT, env=command_env(), timeout=600)


@pytest.fixture(scope="session")
def demo_cache(background):
    """One model cache for every test that runs the demo: its tiny models are trained once per session (by the
    background demo run when one is started: it is waited for, so the cache is complete and quiet)."""
    jobs, plan = background
    if jobs.submitted("demo"):
        with contextlib.suppress(subprocess.TimeoutExpired):  # its outcome is asserted by the tests using demo_run
            jobs.result("demo")
    return plan["cache"]


@pytest.fixture(scope="session")
def demo_run(background, demo_cache):
    """`stitch demo --quick --no-progress --cache-dir C --out O`, run once per session in a directory of its own
    (the console script when installed, else `python -m stitch.cli`); the tests that run that command share it."""
    jobs, plan = background
    program, args, cwd, out = plan["demo"]
    return DemoRun(program, args, cwd, out, jobs.result("demo"))


@pytest.fixture(scope="session")
def readme_runs(background):
    """`run(block, i)`: the CompletedProcess of the README Quickstart's block `block`, command `i`, as
    tests/test_readme.py's checked() rewrites it (installs dry-run, the suite collected only), waited for."""
    jobs, _ = background
    return lambda block, i: jobs.result(f"readme {block} {i}")


@pytest.fixture(scope="session")
def notebook_runs(background):
    """`run(path)`: that notebook executed in its own fresh kernel by tests/run_notebook.py, waited for."""
    jobs, plan = background

    def run(path: Path) -> NotebookRun:
        planned = plan["notebooks"][path]
        return NotebookRun(planned.executed, planned.tmp, jobs.result(path.name))

    return run
