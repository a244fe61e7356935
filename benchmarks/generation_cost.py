"""Generation cost: cached generation under injection against HF `generate` and the re-encoding reference.

    python benchmarks/generation_cost.py        # prints a table; writes benchmarks/results/generation_cost.txt

Models: two random Llama-style models, 8 layers, width 256, fp32, CPU, one torch thread; splice 4 -> 4 with
a random linear adapter; one prompt of 24 B tokens; EOS never stops a row. Per-token time is the wall time of
one `generate` call divided by the new tokens (the prompt's prefill included). Times are the best of
interleaved repeats. Goals (issue 11): "prompt" per-token <= 1.2x HF `generate` of B alone; "restitch"
per-token flat within 1.3x over 16, 64 and 256 new tokens, and >= 5x faster than the re-encoding reference at
256 — with A and B sharing a tokenizer (A reads B's ids) and with two tokenizers (A re-tokenizes the text).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import stitch
from stitch.testing import byte_bpe_tokenizer, tiny_model

torch.set_num_threads(1)
PROMPT = "Stitching splices the residual stream of one model into another, mid-forward, and"


def best(fn, repeats: int) -> float:
    times = []
    with torch.no_grad():
        fn()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def models(tok_a, tok_b):
    A = stitch.load_model(tiny_model("llama", len(tok_a), n_layers=8, d_model=256, n_ctx=1024, seed=0), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("llama", len(tok_b), n_layers=8, d_model=256, n_ctx=1024, seed=1), tokenizer=tok_b)
    torch.manual_seed(0)
    adapter = torch.nn.Linear(256, 256).requires_grad_(False)
    return A, B, stitch.Splice(A, B, 4, adapter=adapter)


def hf_generate(B, n: int):
    batch = B.encode([PROMPT])
    return lambda: B.model.generate(
        batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=n, min_new_tokens=n,
        do_sample=False, pad_token_id=B.pad_token_id,
    )


def splice_generate(sp, n: int, policy: str, use_cache: bool = True):
    return lambda: sp.generate([PROMPT], n, policy, stop_at_eos=False, use_cache=use_cache)


def main() -> str:
    tok = byte_bpe_tokenizer(300)
    lines = ["setting: 2 x 8-layer width-256 Llama, fp32, CPU, 1 thread; splice 4 -> 4; prompt of "
             f"{len(tok(PROMPT).input_ids)} tokens; time per new token (ms), best of repeats", ""]
    _, B, shared = models(tok, tok)
    n = 64
    hf = best(hf_generate(B, n), 5) / n
    prompt = best(splice_generate(shared, n, "prompt"), 5) / n
    lines += ["| measure | per token (ms) | ratio | goal |", "|---|---|---|---|",
              f"| HF generate, B alone, {n} tokens | {1e3 * hf:.2f} | 1.00 | |",
              f"| \"prompt\" policy, {n} tokens | {1e3 * prompt:.2f} | {prompt / hf:.2f} | <= 1.2 |"]
    for label, sp in (("shared tokenizer", shared), ("two tokenizers", models(tok, byte_bpe_tokenizer(600, bos=False))[2])):
        per = {k: best(splice_generate(sp, k, "restitch"), 3 if k < 256 else 2) / k for k in (16, 64, 256)}
        ref = best(splice_generate(sp, 256, "restitch", use_cache=False), 1) / 256
        flat = max(per.values()) / min(per.values())
        lines += [f"| \"restitch\", {label}, {k} tokens | {1e3 * t:.2f} | {t / hf:.2f} x HF | |" for k, t in per.items()]
        lines += [f"| \"restitch\", {label}: max/min per token over 16/64/256 | | {flat:.2f} | <= 1.3 |",
                  f"| re-encoding reference, {label}, 256 tokens | {1e3 * ref:.2f} | {ref / per[256]:.1f}x slower | >= 5 |"]
    table = "\n".join(lines)
    out = Path(__file__).parent / "results" / "generation_cost.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"torch {torch.__version__}\n{table}\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
