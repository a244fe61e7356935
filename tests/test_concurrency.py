"""Concurrent calls on shared models: every call returns what it returns alone, and no model is left altered.

Scoped mutation of a model (hooks, block skipping) is serialised by a per-model re-entrant lock, so threads
sharing a HookedLM (or two HookedLMs wrapping one HF model) cannot see each other's hooks or skipped blocks.
"""

import threading
import time

import pytest
import torch

import stitch
from stitch.testing import byte_bpe_tokenizer, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Stitching splices the residual stream.", "Hi"]


@pytest.fixture(scope="module")
def models():
    tok = byte_bpe_tokenizer()
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), n_layers=4, seed=1), tokenizer=tok)
    B = stitch.load_model(tiny_model("llama", vocab_size=len(tok), n_layers=4, seed=2), tokenizer=tok)
    # a second wrapper of A's HF model: the lock belongs to the module, not to the wrapper
    A2 = stitch.load_model(A.model, tokenizer=tok)
    return A, B, A2


def _calls(A, B, A2):
    """Named zero-argument calls covering every kind of scoped mutation, each on shared models."""
    batch_a, batch_b = A.encode(TEXTS), B.encode(TEXTS)
    res_a = A.residuals(batch_a, [2])[2]
    splices = [stitch.Splice(A, B, source_layer=n, target_layer=m) for n, m in ((1, 1), (2, 3), (3, 0))]
    self_splice = stitch.Splice(A2, A, source_layer=2)
    double = [("blocks.1.hook_resid_pre", lambda r, hook: 2 * r)]
    calls = {
        "A.logits": lambda: A.logits(batch_a),
        "B.logits": lambda: B.logits(batch_b),
        "A2.logits": lambda: A2.logits(batch_a),
        "A.residuals": lambda: torch.cat(list(A.residuals(batch_a, [1, 3]).values())),
        "A2.residuals": lambda: A2.residuals(batch_a, [4])[4],
        "A.run_from": lambda: A.run_from(res_a, 2, batch_a),
        "A2.run_from": lambda: A2.run_from(res_a, 3, batch_a),
        "B.run_from": lambda: B.run_from(torch.zeros_like(res_a[:, : batch_b.shape[1]]), 1, batch_b),
        "A.run_with_hooks": lambda: A.run_with_hooks(batch_a, fwd_hooks=double),
        "B.run_with_cache": lambda: B.run_with_cache(batch_b)[1]["resid_post", 2],
        "self_splice": lambda: self_splice(TEXTS).logits,
    }
    for sp in splices:
        calls[f"splice {sp.source_layer}->{sp.target_layer}"] = lambda sp=sp: sp(TEXTS).logits
    return calls


@torch.no_grad()
def test_four_threads_mixing_every_call_leave_every_model_bit_exact(models):
    A, B, A2 = models
    batch_a, batch_b = A.encode(TEXTS), B.encode(TEXTS)
    before = {"A": A.logits(batch_a), "B": B.logits(batch_b), "A2": A2.logits(batch_a)}
    calls = _calls(A, B, A2)
    alone = {name: call() for name, call in calls.items()}  # each call's result with no other thread
    names = sorted(calls)
    wrong, errors, counts = [], [], [0] * 4
    deadline = time.monotonic() + 4.0

    def worker(k: int) -> None:
        i, name = k, None
        try:
            while time.monotonic() < deadline:
                name = names[(i * 7 + k) % len(names)]  # each thread walks the calls in its own order
                i += 1
                got = calls[name]()
                if not (isinstance(got, torch.Tensor) and torch.equal(got, alone[name])):
                    wrong.append(name)
                counts[k] += 1
        except Exception as err:  # noqa: BLE001 - reported below with the thread's call
            errors.append(f"{name}: {err!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    assert not errors, errors[:3]
    assert not wrong, f"{len(wrong)} wrong results under concurrency, e.g. {sorted(set(wrong))[:4]}"
    assert min(counts) > 20, counts  # every thread really ran, interleaved with the others
    after = {"A": A.logits(batch_a), "B": B.logits(batch_b), "A2": A2.logits(batch_a)}
    for name, logits in before.items():
        assert torch.equal(after[name], logits), name
    for model in (A, B):
        assert not any("forward" in block.__dict__ for block in model.blocks)  # no block left patched


def test_hooks_scope_holds_the_model_for_its_thread(models):
    """Inside `with A.hooks(...)` the scope's thread may call A again (re-entrant); another thread waits."""
    A, _, A2 = models
    batch = A.encode(TEXTS)
    plain = A.logits(batch)
    other: list[torch.Tensor] = []
    with A.hooks([("blocks.0.hook_resid_pre", lambda r, hook: torch.zeros_like(r))]):
        hooked = A.logits(batch)  # same thread: re-enters the lock, sees the hook
        thread = threading.Thread(target=lambda: other.append(A2.logits(batch)))
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # waits for the scope to end instead of running with its hook
    thread.join(timeout=30)
    assert not torch.equal(hooked, plain)
    assert torch.equal(other[0], plain)
