"""Communication overhead: `stitch.communicate` per generated token against B's own cached generation.

    python benchmarks/communication_cost.py     # prints a table; writes benchmarks/results/communication_cost.txt

Models: two random Llama-style models, 8 layers, width 256, fp32, CPU, one torch thread, one tokenizer;
k = j = 4, `replace` at the last prompt token; prompts of ~24 B tokens for A and B; 16, 32, 64 new tokens (the tiny models have 128 positions); EOS never stops a row.
Per-token time = wall time of one call / new tokens (A's prompt pass and B's prefill included); best of
interleaved repeats. Baseline: B alone (`control="none"`, equal to HF `generate`; the same cached loop).
Goal (issue 12): communication per-token <= 1.3x B alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import stitch
from stitch.testing import byte_bpe_tokenizer, tiny_model

torch.set_num_threads(1)
PA = ["Stitching splices the residual stream of one model into another, mid-forward, and"]
PB = ["The second model reads the first one's state at its last token and then"]


def best(fn, repeats: int) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(times)


def main() -> str:
    tok = byte_bpe_tokenizer()
    A = stitch.load_model(tiny_model("llama", len(tok), 8, 256, seed=0), tokenizer=tok)
    B = stitch.load_model(tiny_model("llama", len(tok), 8, 256, seed=1), tokenizer=tok)
    lines = ["new_tokens  B alone ms/tok  communicate ms/tok  ratio  (+generated) ms/tok  ratio"]
    for n in (16, 32, 64):  # the tiny models have 128 positions
        kw = dict(max_new_tokens=n, stop_at_eos=False)
        alone = best(lambda: stitch.communicate(A, B, PA, PB, 4, 4, control="none", **kw), 3) / n
        comm = best(lambda: stitch.communicate(A, B, PA, PB, 4, 4, **kw), 3) / n
        also = best(lambda: stitch.communicate(A, B, PA, PB, 4, 4, inject="generated", **kw), 3) / n
        lines.append(f"{n:10d}  {alone * 1e3:14.2f}  {comm * 1e3:18.2f}  {comm / alone:5.2f}x  "
                     f"{also * 1e3:20.2f}  {also / alone:5.2f}x")
    text = "\n".join(lines)
    Path(__file__).with_name("results").joinpath("communication_cost.txt").write_text(text + "\n")
    return text


if __name__ == "__main__":
    print(main())
