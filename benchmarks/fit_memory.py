"""Streaming closed-form fit vs materialising all pairs: peak memory and time, side by side.

    python benchmarks/fit_memory.py            # ~2.5 minutes on 2 CPU cores; needs ~5 GB free

Paired states at width 512 arrive in chunks of 16,384 token pairs (as they come off a model).
- streaming: each chunk goes into `SufficientStats.update` and is dropped (O(d²) memory);
- one-shot: all pairs are first materialised as float32 [n, 512] tensors, then fitted with the same
  library path (`SufficientStats().update(X, Y)`, i.e. `Affine.fit(X, Y)`);
- naive (at the small size only): the textbook float64 normal equations on the whole matrix.
Each configuration runs in its own process so peak RSS (ru_maxrss) is its own; "extra" is the peak
above the process's RSS after imports and a warm-up fit. Timings cover the fitting work only (the
synthetic data generation is excluded in every mode). Both fits (Affine and Procrustes) are solved.
Goals: streaming extra memory flat as n grows 10x; streaming time <= 1.5x one-shot time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

D, CHUNK, SIZES = 512, 16_384, (100_000, 1_000_000)
RESULTS = Path(__file__).parent / "results" / "fit_memory.txt"


def chunks(n: int):
    """Deterministic chunks: y is a signed permutation of x plus noise (Procrustes should recover it)."""
    g = torch.Generator().manual_seed(0)
    perm, signs = torch.randperm(D, generator=g), torch.randint(0, 2, (D,), generator=g) * 2.0 - 1
    for i, start in enumerate(range(0, n, CHUNK)):
        g.manual_seed(1000 + i)
        x = torch.randn(min(CHUNK, n - start), D, generator=g) * 3 + 1
        yield x, x[:, perm] * signs + 0.1 * torch.randn(x.shape, generator=g)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def solve(stats):
    from stitch.adapters import Affine, Procrustes

    return Affine.fit_stats(stats), Procrustes.fit_stats(stats)


class Clock:
    """Accumulates wall and process-CPU seconds over the timed sections only."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def run_streaming(n: int, clock: Clock) -> None:
    from stitch.adapters import SufficientStats

    stats = SufficientStats()
    for x, y in chunks(n):
        with clock:
            stats.update(x, y)
    with clock:
        solve(stats)


def materialise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y, at = torch.empty(n, D), torch.empty(n, D), 0
    for x, y in chunks(n):
        X[at : at + len(x)], Y[at : at + len(x)] = x, y
        at += len(x)
    return X, Y


def run_one_shot(n: int, clock: Clock) -> None:
    from stitch.adapters import SufficientStats

    X, Y = materialise(n)
    with clock:
        solve(SufficientStats().update(X, Y))


def run_naive(n: int, clock: Clock) -> None:
    X, Y = materialise(n)
    with clock:
        X64, Y64 = X.double(), Y.double()
        X64 -= X64.mean(0)
        Y64 -= Y64.mean(0)
        torch.linalg.solve(X64.T @ X64, X64.T @ Y64)


def worker(mode: str, n: int) -> None:
    from stitch.adapters import SufficientStats

    solve(SufficientStats().update(torch.randn(2048, D), torch.randn(2048, D)))  # warm-up: LAPACK, allocator
    base, clock = rss_mb(), Clock()
    {"streaming": run_streaming, "one-shot": run_one_shot, "naive": run_naive}[mode](n, clock)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"mode": mode, "n": n, "seconds": clock.wall, "cpu": clock.cpu, "extra_mb": peak - base})
    )


def measure(mode: str, n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = [measure(mode, n) for n in SIZES for mode in ("streaming", "one-shot")]
    rows.append(measure("naive", SIZES[0]))
    lines = [
        f"fit_memory: width {D}, chunks of {CHUNK} pairs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f"{'mode':<10} {'pairs':>10} {'wall s':>8} {'cpu s':>8} {'extra MB':>10}",
    ]
    lines += [
        f"{r['mode']:<10} {r['n']:>10,} {r['seconds']:>8.2f} {r['cpu']:>8.2f} {r['extra_mb']:>10.1f}"
        for r in rows
    ]
    get = {(r["mode"], r["n"]): r for r in rows}
    small, big = SIZES
    for n in SIZES:
        wall = get["streaming", n]["seconds"] / get["one-shot", n]["seconds"]
        cpu = get["streaming", n]["cpu"] / get["one-shot", n]["cpu"]
        lines.append(
            f"time streaming / one-shot at {n:,} pairs: {wall:.2f}x wall, {cpu:.2f}x cpu (goal <= 1.5x)"
        )
    for mode in ("streaming", "one-shot"):
        growth = get[mode, big]["extra_mb"] / get[mode, small]["extra_mb"]
        lines.append(
            f"peak extra memory {mode}, {big:,} / {small:,} pairs: {growth:.2f}x "
            f"({get[mode, small]['extra_mb']:.0f} -> {get[mode, big]['extra_mb']:.0f} MB)"
        )
    memory = get["one-shot", big]["extra_mb"] / get["streaming", big]["extra_mb"]
    lines.append(f"peak extra memory one-shot / streaming at {big:,} pairs: {memory:.1f}x")
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(Path(__file__).parent.parent))
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
