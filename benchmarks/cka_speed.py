"""CKA heatmap speed and minibatch CKA memory, measured side by side.

    $ python benchmarks/cka_speed.py            # ~1-2 minutes on 2 CPU cores
    $ python benchmarks/cka_speed.py --quick    # smaller sizes, for a smoke run
    $ python benchmarks/cka_speed.py --threads 2

1. A full 13 x 13 layer heatmap (n = 2048 samples, width 512, float32 inputs like real activations):
   `analyses.cka.cka_matrix` (each layer centred and its packed lower-triangular Gram formed once)
   against the per-pair recomputation that common CKA code does, in its leanest form (Kornblith et
   al.'s demo without its symmetry check: for every pair, form both Grams, centre them in O(n^2), take
   the Frobenius products), in float64 on inputs already cast to float64. For context, the H K H
   snippet most often copied (n x n centring matrices, self-HSICs re-forming their Grams) is timed on
   one pair and extrapolated to the 169.
2. MinibatchCKA's peak memory as the number of samples grows 8x, each run in a fresh process so the
   peak resident set size is its own (and the full-batch Gram path is shown for contrast).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analyses.cka import MinibatchCKA, cka_matrix  # noqa: E402


def baseline_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """One pair, the common way: both Grams recomputed, centred, compared (float64, no symmetry check)."""
    gx, gy = _center(x @ x.T), _center(y @ y.T)
    return ((gx * gy).sum() / (torch.linalg.norm(gx) * torch.linalg.norm(gy))).item()


def _center(gram: torch.Tensor) -> torch.Tensor:
    means = gram.mean(0)
    means -= means.mean() / 2
    return gram - means[:, None] - means[None, :]


def centering_matrix_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """One pair as the most copied CKA snippets do it: H K H with an n x n centring matrix (n^3 matmuls),
    and the self-HSICs recomputing their Grams again (6 Grams and 4 n^3 products per pair)."""

    def hsic(a, b):
        h = torch.eye(a.shape[0], dtype=a.dtype) - 1.0 / a.shape[0]
        return ((h @ (a @ a.T) @ h) * (h @ (b @ b.T) @ h)).sum()

    return (hsic(x, y) / torch.sqrt(hsic(x, x) * hsic(y, y))).item()


def baseline_matrix(xs, ys) -> torch.Tensor:
    return torch.tensor([[baseline_linear_cka(x.double(), y.double()) for y in ys] for x in xs])


def fake_layers(n_layers: int, n: int, width: int, seed: int) -> list[torch.Tensor]:
    """Residual-stream-like layers: a drifting shared signal, a massive-activation dimension, float32."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g)
    layers = []
    for _ in range(n_layers):
        h = h + 0.5 * torch.tanh(h @ (torch.randn(width, width, generator=g) / width**0.5))
        layer = h.clone()
        layer[:, 0] += 1e4  # a massive activation: a huge common offset
        layers.append(layer.float())
    return layers


def _timed(fn, repeats: int = 1):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], value


def heatmap_speed(n: int, width: int, n_layers: int) -> list[str]:
    xs, ys = fake_layers(n_layers, n, width, 0), fake_layers(n_layers, n, width, 1)
    xs64, ys64 = [x.double() for x in xs], [y.double() for y in ys]  # the baseline gets float64 for free
    t_fast, fast = _timed(lambda: cka_matrix(xs, ys), repeats=3)
    t_self, _ = _timed(lambda: cka_matrix(xs, xs), repeats=3)
    t_slow, slow = _timed(lambda: baseline_matrix(xs64, ys64))
    t_pair, value = _timed(lambda: centering_matrix_cka(xs64[0], ys64[0]))  # one pair; n^3 work is slow
    t_copied = t_pair * n_layers * n_layers
    diff = max((fast - slow).abs().max().item(), abs(value - fast[0, 0].item()))
    head = f"heatmap {n_layers}x{n_layers}, n={n}, width={width}"
    return [
        f"{head}: cka_matrix {t_fast:.2f} s (median of 3), per-pair baseline {t_slow:.2f} s, "
        f"speed-up {t_slow / t_fast:.1f}x, max |diff| {diff:.1e}",
        f"{head}, one model against itself (ys is xs, Grams shared): cka_matrix {t_self:.2f} s, "
        f"speed-up {t_slow / t_self:.1f}x over the per-pair baseline",
        f"{head}: H K H snippet {t_pair:.2f} s for one pair, x{n_layers * n_layers} pairs = {t_copied:.0f} s "
        f"(extrapolated), {t_copied / t_fast:.0f}x cka_matrix",
    ]


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def _peak_child(mode: str, n: int, width: int, batch: int, queue) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(width, width, generator=g)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS (Linux)
    before = _rss_kib("VmRSS")
    if mode == "minibatch":  # batches arrive from a loader: never all n samples at once
        mb = MinibatchCKA()
        for _ in range(n // batch):
            x = torch.randn(batch, width, generator=g)
            mb.update([x, x.tanh()], [x @ proj])
        value = mb.compute()[0, 0].item()
    else:  # the samples held at once, as full-batch CKA needs them
        x = torch.randn(n, width, generator=g)
        value = cka_matrix([x, x.tanh()], [x @ proj])[0, 0].item()
    queue.put((_rss_kib("VmHWM") - before, value))


def peak_kib(mode: str, n: int, width: int, batch: int) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(mode, n, width, batch, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def memory_growth(n: int, width: int, batch: int) -> list[str]:
    lines = []
    for mode in ("minibatch", "full-batch"):
        (small, v1), (large, v8) = peak_kib(mode, n, width, batch), peak_kib(mode, 8 * n, width, batch)
        lines.append(
            f"{mode} CKA peak memory above baseline: n={n}: {small / 1024:.1f} MiB, n={8 * n}: "
            f"{large / 1024:.1f} MiB, ratio {large / max(small, 1):.2f}x (CKA {v1:.3f} / {v8:.3f})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: OpenMP with every core busy is erratic on shared machines)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, width, layers = (512, 128, 13) if args.quick else (2048, 512, 13)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load} on {os.cpu_count()} cores"
    ]
    print(lines[0], flush=True)
    for line in heatmap_speed(n, width, layers):
        lines.append(line)
        print(line, flush=True)
    for line in memory_growth(n=1024 if args.quick else 4096, width=256, batch=256):
        lines.append(line)
        print(line, flush=True)
    if not args.quick:
        out = Path(__file__).parent / "results" / "cka_speed.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
