"""Property: a training run killed with SIGKILL at any moments (mid-step, mid-save, mid-prune) and rerun
until it finishes ends with the uninterrupted run's adapter and metrics, bit for bit.

Each run is a forked child of the test process (the models are already built, so a child starts in
milliseconds); `Process.kill()` sends SIGKILL, which no handler can intercept.
"""

import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import safetensors.torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stitch
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model
from stitch.training.loop import TrainConfig, train

TEXTS = list(dict.fromkeys(CORPUS))
FORK = multiprocessing.get_context("fork")
_MODELS: dict = {}  # set before forking: children inherit them


def _config(out: Path) -> TrainConfig:
    return TrainConfig(out=str(out), source_layer=1, kind="lowrank", adapter_options=("rank=4",), lr=1e-2,
                       steps=10, batch_size=2, warmup=2, schedule="cosine", log_every=1, eval_every=4,
                       checkpoint_every=1, keep_checkpoints=2, progress=False)  # fmt: skip


def _train(out: str) -> None:
    A, B = _MODELS["pair"]
    train(A, B, TEXTS, _config(Path(out)), eval_texts=TEXTS[:2])


def _run(out: Path, kill_after: float | None) -> int | None:
    """Run training in a child; SIGKILL it after `kill_after` seconds. The exit code (None: killed)."""
    child = FORK.Process(target=_train, args=(str(out),))
    child.start()
    child.join(timeout=kill_after if kill_after is not None else 60)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return child.exitcode


def _result(out: Path) -> tuple[dict, list]:
    """The adapter and the metrics, without the wall-clock `tokens_per_s` (speed is no part of a run's state)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]
    return safetensors.torch.load_file(out / "adapter.safetensors"), records


@pytest.fixture(scope="module")
def reference():
    tok = byte_bpe_tokenizer()
    make = lambda seed: stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=seed), tokenizer=tok)  # noqa: E731
    _MODELS["pair"] = (make(1), make(2))
    out = Path(tempfile.mkdtemp(prefix="stitch-kill-ref-"))
    start = time.monotonic()
    assert _run(out, None) == 0
    yield _result(out), time.monotonic() - start
    shutil.rmtree(out, ignore_errors=True)


@settings(max_examples=4, deadline=None)
@given(kills=st.lists(st.floats(0.0, 0.8), min_size=2, max_size=4))
def test_a_run_killed_at_random_moments_resumes_to_the_uninterrupted_adapter(reference, kills):
    (weights, metrics), duration = reference
    out = Path(tempfile.mkdtemp(prefix="stitch-kill-"))  # hypothesis runs examples outside tmp_path
    try:
        for fraction in kills:  # mostly killed; a run may finish first when the machine got faster
            _run(out, fraction * duration)
        assert _run(out, None) == 0  # rerun until it finishes: it resumes, never refuses or starts afresh
        got_weights, got_metrics = _result(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert got_weights.keys() == weights.keys()
    assert all(got_weights[k].equal(v) for k, v in weights.items())
    assert got_metrics == metrics
