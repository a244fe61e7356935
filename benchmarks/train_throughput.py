"""Training throughput: the seeds' loop against stitch's, on the models every step and from the cache.

    python benchmarks/train_throughput.py          # prints a table; writes benchmarks/results/train_throughput.txt
    python benchmarks/train_throughput.py --fresh  # the same, each loop's peak memory from a fresh process

Model pair: two random Llama-style models (8 layers, width 256, vocab 300, fp32, CPU, one thread), splice
4 → 4 (the middle), an affine adapter, batch 8 texts of ~195 tokens, AdamW. Tokens/s counts B's labels.
- (a) seeds: both models in full with every hidden state returned, every step (A's layer N read from
  `hidden_states`, B run in full with a hook replacing its layer-M input; for a representation loss B's
  own layer-M state read from a second full forward's `hidden_states`);
- (b) stitch's step from the models (`LiveInputs`): A runs blocks [0, N), B [M, L) (or [0, M) for targets);
- (c) stitch's step from an activation store built once (`CachedInputs`): no A forward, and no B forward
  at all for a representation loss. The one-off cost of building the store is reported beside.
- floors (CE): the least work any loop making the same update can do with HF's own code and kernels: HF's
  forward of a model holding only A's blocks [0, N) (no grad), and of one holding only B's blocks [M, L) from
  the adapter's output (`inputs_embeds`), CE, backward with B frozen; no pairing, no store, no hooks. A
  loop cannot beat its floor's "x seeds" without a cheaper B (other kernels), so the floors say what a
  goal on these ratios can ask. Below them, B's blocks [M, L) are timed alone: forward F, the backward's
  input gradients G_in and weight gradients G_w; (c)/(a) ≈ (4F + G_in + G_w) / (F + G_in) at M = L/2
  ((b)/(a) ≈ the same over 2F + G_in), which is ≤ 3 whenever G_in ≥ F ≥ G_w (input gradients cost at
  least the forward's matmuls, weight gradients at most them) and equals 3 only for blocks of nothing but
  matmuls.
"x seeds" is the median over the interleaved repeats of (seeds' time / loop's time) in that repeat, wall
clock (a ratio of neighbours, so a machine that slows down between repeats moves both); "x seeds CPU" the
same of the process's CPU time (one torch thread: CPU time is what the loop itself cost, less disturbed by
other jobs on a shared machine); tokens/s is from the loop's best repeat. Peak MB is each loop's own peak resident memory above the process's resting state: before
every timed loop the freed heap is handed back to the OS (`malloc_trim`) and the kernel's high-water mark
is reset (`/proc/self/clear_refs`), so every loop is measured, not only the first (Linux; "n/a" elsewhere).
`--fresh` measures each loop's peak once more in a fresh process instead, as a check of the in-process numbers.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import stitch
from stitch.activations import collect_activations
from stitch.losses import IGNORE
from stitch.models.placement import frozen_weights
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model
from stitch.training.distributed import Dist
from stitch.training.losses import parse_objective
from stitch.training.step import CachedInputs, LiveInputs, PairView, Term, step_backward

torch.set_num_threads(1)
LAYER, STEPS, REPEATS = 4, 4, 5
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
        loss = next_token_ce(logits, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()


def hf_blocks(lm, lo: int, hi: int):
    """`lm`'s HF model holding only its blocks [lo, hi): a shallow copy sharing every module and weight."""
    model = copy.copy(lm.model)
    model._modules = dict(model._modules)
    base = model.model = copy.copy(model.model)
    base._modules = dict(base._modules)
    base.layers = torch.nn.ModuleList(list(lm.model.model.layers)[lo:hi])
    base.config = copy.copy(base.config)
    base.config.num_hidden_layers = hi - lo
    return model


def next_token_ce(logits, batch):
    """Mean next-token cross-entropy of `logits` over the batch's real (unpadded) labels."""
    labels = torch.where(batch.attention_mask[:, 1:].bool(), batch.input_ids[:, 1:], IGNORE).flatten()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels, ignore_index=IGNORE)


def floor_step(head, tail, adapter, opt, batch, cached):
    """HF's forward over A's blocks [0, N) (skipped: `cached`), the adapter, HF's over B's blocks [M, L)."""
    ids, mask = batch.input_ids, batch.attention_mask
    if cached is None:
        with torch.no_grad():
            cached = head.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    logits = tail(inputs_embeds=adapter(cached), attention_mask=mask, use_cache=False).logits
    loss = next_token_ce(logits, batch)
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


def pick(step: int) -> list[int]:
    return list(range(8 * (step % 2), 8 * (step % 2) + 8))


def targets(name: str) -> list[int]:
    """B's layers an objective reads as targets (MSE: B's own layer-M states; CE: none)."""
    return [LAYER] if name == "mse" else []


def build_store(A, B, name: str):
    return collect_activations(A, B, TEXTS, [LAYER], targets(name), batch_size=8)


def build_loops(A, B, name: str, store) -> dict:
    objective = parse_objective(name)
    terms = [Term(name, 0, objective, 1.0)]
    loops = {}
    for label in LOOPS if name == "ce" else LOOPS[:3]:
        adapter = stitch.adapters.build_adapter("affine", d_source=256, d_target=256)
        opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
        if label.startswith("(a)"):
            loops[label] = lambda s, a=adapter, o=opt: seeds_step(
                A, B, a, o, [TEXTS[i] for i in pick(s)], name
            )
        elif label.startswith("floor"):
            loops[label] = floor_loop(A, B, adapter, opt, cached="(c)" in label)
        else:
            sp = stitch.Splice(A, B, LAYER, adapter=adapter)
            inputs = LiveInputs(A, B, TEXTS, [LAYER], targets(name)) if "(b)" in label else CachedInputs(store)
            loops[label] = lambda s, sp=sp, i=inputs, o=opt: stitch_step(sp, i, o, terms, pick(s))
    return loops


def floor_loop(A, B, adapter, opt, cached: bool):
    head, tail = hf_blocks(A, 0, LAYER), hf_blocks(B, LAYER, len(B.model.model.layers))
    batches = [B.encode([TEXTS[i] for i in pick(s)]) for s in (0, 1)]
    with torch.no_grad():
        states = [head.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state
                  for b in batches] if cached else [None, None]  # fmt: skip

    def step(s):
        with frozen_weights(B.model):
            floor_step(head, tail, adapter, opt, batches[s % 2], states[s % 2])

    return step


LOOPS = ("(a) seeds", "(b) stitch, from the models", "(c) stitch, from the cache",
         "floor (b): HF A[0,N) + B[M,L)", "floor (c): HF B[M,L) alone")  # fmt: skip


def components(B) -> tuple[float, float, float]:
    """(F, G_in, G_w) in ms per step: B's blocks [M, L) forward, input-gradient and weight-gradient backward."""
    tail = hf_blocks(B, LAYER, len(B.model.model.layers))
    batch = B.encode([TEXTS[i] for i in pick(0)])
    source = torch.randn(*batch.input_ids.shape, 256, requires_grad=True)

    def run(backward: bool, weights: bool) -> float:
        best = float("inf")
        with contextlib.nullcontext() if weights else frozen_weights(B.model):
            for _ in range(REPEATS + 1):
                start = time.process_time()
                logits = tail(
                    inputs_embeds=source, attention_mask=batch.attention_mask, use_cache=False
                ).logits
                loss = next_token_ce(logits, batch)
                if backward:
                    loss.backward()
                best = min(best, time.process_time() - start)
                del logits, loss
        return best * 1000

    forward, inputs_only, weights = run(False, False), run(True, False), run(True, True)
    B.model.zero_grad(set_to_none=True)
    return forward, inputs_only - forward, weights - inputs_only


def fresh_peak(name: str, label: str) -> float | None:
    """One loop's peak MB measured in a new process (models and store built there first)."""
    out = subprocess.run(
        [sys.executable, __file__, "--peak", name, label], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1]) if out.stdout.split()[-1] != "None" else None


def peak_only(name: str, label: str) -> None:
    A, B = models()
    store = build_store(A, B, name)
    print(timed(build_loops(A, B, name, store)[label])[2])


def main(fresh: bool = False) -> None:
    A, B = models()
    labels = sum(int(B.encode(TEXTS[i : i + 8]).attention_mask.sum() - 8) for i in (0, 8)) / 2
    lines = [f"A, B: Llama-style, 8 layers, width 256; splice {LAYER} -> {LAYER}; batch 8 texts, ~{labels:.0f} labels/step",
             f"{'objective':<8} {'loop':<30} {'tokens/s':>9} {'x seeds':>8} {'range':>11} {'x seeds CPU':>11} {'peak MB':>8}"]  # fmt: skip
    for name in ("ce", "mse"):
        t0 = time.perf_counter()
        store = build_store(A, B, name)
        build = time.perf_counter() - t0
        loops = build_loops(A, B, name, store)
        runs = {k: [] for k in loops}  # one (wall, cpu, peak) per repeat
        for _ in range(REPEATS):
            for k, fn in loops.items():
                runs[k].append(timed(fn))
        seeds = runs["(a) seeds"]
        for k, rows in runs.items():
            walls = [s[0] / r[0] for s, r in zip(seeds, rows, strict=True)]
            cpus = [s[1] / r[1] for s, r in zip(seeds, rows, strict=True)]
            peak = (
                fresh_peak(name, k)
                if fresh
                else max((r[2] for r in rows), default=None, key=lambda x: x or 0)
            )
            rate = labels * STEPS / min(r[0] for r in rows)
            spread = f"{min(walls):.2f}-{max(walls):.2f}"
            memory = "n/a" if peak is None else f"{peak:.1f}"
            lines.append(f"{name:<8} {k:<30} {rate:9.0f} {statistics.median(walls):8.2f} {spread:>11} "
                         f"{statistics.median(cpus):11.2f} {memory:>8}")  # fmt: skip
        lines.append(f"{name:<8} {'(c) one-off store build':<30} {build:8.2f}s for {len(TEXTS)} texts")
    f, g_in, g_w = components(B)
    lines.append(f"B's blocks [{LAYER}, 8), CE, per step: F = {f:.0f} ms, G_in = {g_in:.0f} ms ({g_in / f:.2f} F), "
                 f"G_w = {g_w:.0f} ms ({g_w / f:.2f} F); bounds (4F + G_in + G_w) / (F + G_in) = "
                 f"{(4 * f + g_in + g_w) / (f + g_in):.2f} (cache), / (2F + G_in) = "
                 f"{(4 * f + g_in + g_w) / (2 * f + g_in):.2f} (live)")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "train_throughput.txt"
    how = "fresh process per loop" if fresh else "in-process, after malloc_trim and a reset high-water mark"
    out.write_text(f"{text}\n(x seeds: median [range] of per-repeat ratios over {REPEATS} interleaved repeats of "
                   f"{STEPS} steps, one torch thread; tokens/s from the best repeat; F, G: best of {REPEATS + 1}; "
                   f"peak MB: {how})\n")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak"]:
        peak_only(sys.argv[2], sys.argv[3])
    else:
        main(fresh="--fresh" in sys.argv[1:])
