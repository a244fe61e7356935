"""Training throughput: the seeds' loop against stitch's, on the models every step and from the cache.

    python benchmarks/train_throughput.py          # prints a table; writes benchmarks/results/train_throughput.txt
    python benchmarks/train_throughput.py --fresh  # the same, each loop's peak memory from a fresh process

Model pair: two random Llama-style models (8 layers, width 256, vocab 300, fp32, CPU, one thread), splice
4 → 4 (the middle), an affine adapter, batch 8 texts of ~130 tokens, AdamW. Tokens/s counts B's labels.
- (a) seeds: both models in full with every hidden state returned, every step (A's layer N read from
  `hidden_states`, B run in full with a hook replacing its layer-M input; for a representation loss B's
  own layer-M state read from a second full forward's `hidden_states`);
- (b) stitch's step from the models (`LiveInputs`): A runs blocks [0, N), B [M, L) (or [0, M) for targets);
- (c) stitch's step from an activation store built once (`CachedInputs`): no A forward, and no B forward
  at all for a representation loss. The one-off cost of building the store is reported beside.
Times are the best of interleaved repeats, wall-clock (tokens/s, "x seeds") and the process's CPU time
("x seeds CPU": one torch thread, so CPU time is what the loop itself cost, less disturbed by other jobs on a
shared machine). Peak MB is each loop's own peak resident memory above the process's resting state: before
every timed loop the freed heap is handed back to the OS (`malloc_trim`) and the kernel's high-water mark
is reset (`/proc/self/clear_refs`), so every loop is measured, not only the first (Linux; "n/a" elsewhere).
`--fresh` measures each loop's peak once more in a fresh process instead, as a check of the in-process numbers.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import stitch
from stitch.activations import collect_activations
from stitch.losses import IGNORE
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model
from stitch.training.distributed import Dist
from stitch.training.losses import parse_objective
from stitch.training.step import CachedInputs, LiveInputs, PairView, Term, step_backward

torch.set_num_threads(1)
LAYER, STEPS, REPEATS = 4, 4, 3
TEXTS = [" ".join(CORPUS[i % len(CORPUS)] for i in range(k, k + 4)) for k in range(16)]


def models():
    tok = byte_bpe_tokenizer()
    make = lambda seed: stitch.load_model(tiny_model("llama", vocab_size=len(tok), n_layers=8, d_model=256,  # noqa: E731
                                                     n_ctx=512, seed=seed), tokenizer=tok)  # fmt: skip
    return make(1), make(2)


def seeds_step(A, B, adapter, opt, texts, objective):
    batch = B.encode(texts)
    ids, mask = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        source = A.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[LAYER]
    mapped = adapter(source)
    if objective == "mse":
        with torch.no_grad():
            target = B.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[
                LAYER
            ]
        real = mask.bool()
        loss = (mapped[real] - target[real]).pow(2).mean()
    else:
        layer = B.model.model.layers[LAYER]

        def replace(module, args, kwargs):
            return (mapped, *args[1:]), kwargs if args else (args, {**kwargs, "hidden_states": mapped})

        handle = layer.register_forward_pre_hook(replace, with_kwargs=True)
        try:
            logits = B.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).logits
        finally:
            handle.remove()
        labels = torch.where(mask[:, 1:].bool(), ids[:, 1:], IGNORE)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    opt.zero_grad()
    loss.backward()
    opt.step()


def stitch_step(sp, inputs, opt, terms, indices):
    opt.zero_grad()
    step_backward(terms, [[PairView(sp, inputs.prepare(indices))]], Dist())
    opt.step()


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def _rest() -> float | None:
    """Hand freed memory back to the OS and reset the peak-RSS mark; the resting RSS in MB (None: not Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return None


def timed(fn) -> tuple[float, float, float | None]:
    """(wall seconds, CPU seconds, peak MB above the resting RSS) of STEPS steps of `fn`."""
    resting = _rest()
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(STEPS):
        fn(step)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, None if resting is None else _status_mb("VmHWM") - resting


def build_loops(A, B, name: str, store) -> dict:
    objective = parse_objective(name)
    terms = [Term(name, 0, objective, 1.0)]
    targets = [LAYER] if name == "mse" else []
    pick = lambda s: list(range(8 * (s % 2), 8 * (s % 2) + 8))  # noqa: E731
    loops = {}
    for label in LOOPS:
        adapter = stitch.adapters.build_adapter("affine", d_source=256, d_target=256)
        opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
        sp = stitch.Splice(A, B, LAYER, adapter=adapter)
        if label.startswith("(a)"):
            loops[label] = lambda s, a=adapter, o=opt: seeds_step(A, B, a, o, [TEXTS[i] for i in pick(s)], name)
        else:
            inputs = LiveInputs(A, B, TEXTS, [LAYER], targets) if "(b)" in label else CachedInputs(store)
            loops[label] = lambda s, sp=sp, i=inputs, o=opt: stitch_step(sp, i, o, terms, pick(s))
    return loops


LOOPS = ("(a) seeds", "(b) stitch, from the models", "(c) stitch, from the cache")


def fresh_peak(name: str, label: str) -> float | None:
    """One loop's peak MB measured in a new process (models and store built there first)."""
    out = subprocess.run([sys.executable, __file__, "--peak", name, label], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1]) if out.stdout.split()[-1] != "None" else None


def peak_only(name: str, label: str) -> None:
    A, B = models()
    store = collect_activations(A, B, TEXTS, [LAYER], [LAYER] if name == "mse" else [], batch_size=8)
    print(timed(build_loops(A, B, name, store)[label])[2])


def main(fresh: bool = False) -> None:
    A, B = models()
    labels = sum(int(B.encode(TEXTS[i : i + 8]).attention_mask.sum() - 8) for i in (0, 8)) / 2
    lines = [f"A, B: Llama-style, 8 layers, width 256; splice {LAYER} -> {LAYER}; batch 8 texts, ~{labels:.0f} labels/step",
             f"{'objective':<8} {'loop':<28} {'tokens/s':>9} {'x seeds':>8} {'x seeds CPU':>11} {'peak MB':>8}"]  # fmt: skip
    for name in ("ce", "mse"):
        t0 = time.perf_counter()
        store = collect_activations(A, B, TEXTS, [LAYER], [LAYER] if name == "mse" else [], batch_size=8)
        build = time.perf_counter() - t0
        loops = build_loops(A, B, name, store)
        best = {k: (float("inf"), float("inf"), None) for k in loops}
        for _ in range(REPEATS):
            for k, fn in loops.items():
                wall, cpu, peak = timed(fn)
                old = best[k]
                best[k] = (min(old[0], wall), min(old[1], cpu), peak if old[2] is None else max(old[2], peak or 0))
        if fresh:
            best = {k: (w, c, fresh_peak(name, k)) for k, (w, c, _) in best.items()}
        wall0, cpu0 = best["(a) seeds"][0], best["(a) seeds"][1]
        for k, (wall, cpu, peak) in best.items():
            rate = labels * STEPS / wall
            memory = "n/a" if peak is None else f"{peak:.1f}"
            lines.append(f"{name:<8} {k:<28} {rate:9.0f} {wall0 / wall:8.2f} {cpu0 / cpu:11.2f} {memory:>8}")
        lines.append(f"{name:<8} {'(c) one-off store build':<28} {build:8.2f}s for {len(TEXTS)} texts")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "train_throughput.txt"
    how = "fresh process per loop" if fresh else "in-process, after malloc_trim and a reset high-water mark"
    out.write_text(f"{text}\n(best of {REPEATS} interleaved repeats of {STEPS} steps, one torch thread; "
                   f"peak MB: {how})\n")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak"]:
        peak_only(sys.argv[2], sys.argv[3])
    else:
        main(fresh="--fresh" in sys.argv[1:])
