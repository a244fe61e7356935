"""The suite's slow subprocesses, started in the background when the session starts, one at a time.

    jobs = Background()
    jobs.submit("demo", ["stitch", "demo", "--quick", ...], cwd=some_dir, env=env)
    done = jobs.result("demo")            # a subprocess.CompletedProcess, waited for

The demo run (`stitch demo --quick`, the console script), the notebooks (each executed by
tests/run_notebook.py in its own fresh kernel) and the README's other Quickstart commands (pip dry runs, the
suite collected) are subprocesses that pytest only waits for. Run in the
background, in the order the tests need them, they use the second core while the rest of the suite runs on
the first; each test that checks one waits for its result, then asserts exactly what it asserted when it ran
the command itself. Only jobs that a selected test needs are started (`pytest tests/test_score.py` starts none),
and a job not yet run when the session ends (e.g. `-x` stopped it) is cancelled, a running one killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor


class Background:
    """Named subprocess jobs, run one after another in one worker thread (the thread only waits on them)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="suite-background")
        self._jobs: dict[str, Future] = {}
        self._running: subprocess.Popen | None = None
        self._closed = threading.Event()

    def submit(self, name: str, argv: list[str], *, cwd, env: dict, timeout: float) -> None:
        """Queue `argv` (run in `cwd` with `env`, killed after `timeout` seconds) under `name`."""
        assert name not in self._jobs, f"background job {name!r} submitted twice"
        self._jobs[name] = self._pool.submit(self._run, argv, cwd, env, timeout)

    def submitted(self, name: str) -> bool:
        return name in self._jobs

    def result(self, name: str) -> subprocess.CompletedProcess:
        """The finished job's CompletedProcess (stdout and stderr as text); raises TimeoutExpired as run() would."""
        return self._jobs[name].result()

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = self._running
        if running is not None and running.poll() is None:
            _kill_group(running)
            running.wait()

    def _run(self, argv, cwd, env, timeout) -> subprocess.CompletedProcess:
        if self._closed.is_set():
            raise RuntimeError("the session ended before this background job ran")
        # its own process group: killing it also ends what it started (a notebook's kernel)
        with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as process:  # fmt: skip
            self._running = process
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.communicate()
                raise
            finally:
                self._running = None
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
