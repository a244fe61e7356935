"""Splice cost: the splice against the blocks it must run, and a hooked forward against the plain HF one.

    python benchmarks/splice_cost.py            # prints a table of ratios; writes benchmarks/results/splice_cost.txt

Model pair: two random Llama-style models, 8 layers, width 256, CPU, fp32, batch 8 x ~130 tokens.
Reference "A[0,N) + B[M,L)" is the HF model itself with its layer list cut to those blocks (weights
shared), timed alone: the least any implementation must run. Times are the best of interleaved repeats (the least disturbed by other load).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

import stitch
from stitch.testing import byte_bpe_tokenizer, tiny_model

REPEATS = 15
torch.set_num_threads(1)  # one thread: far less disturbed by other load on a small machine


def cut(hf, start: int, stop: int):
    """A shallow copy of a Llama-style HF model whose decoder runs only blocks [start, stop)."""
    inner = copy.copy(hf.model)
    inner._modules = dict(hf.model._modules)
    inner.layers = nn.ModuleList(list(hf.model.layers)[start:stop])
    inner.config = copy.copy(hf.config)
    inner.config.num_hidden_layers = stop - start
    outer = copy.copy(hf)
    outer._modules = dict(hf._modules)
    outer.model = inner
    return outer


def best_times(fns: dict, repeats: int = REPEATS) -> dict:
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}  # best of: robust to other load


def main() -> str:
    torch.manual_seed(0)
    tok = byte_bpe_tokenizer()
    hf_a = tiny_model("llama", vocab_size=len(tok), n_layers=8, d_model=256, n_ctx=256, seed=0)
    hf_b = tiny_model("llama", vocab_size=len(tok), n_layers=8, d_model=256, n_ctx=256, seed=1)
    A, B = stitch.load_model(hf_a, tokenizer=tok), stitch.load_model(hf_b, tokenizer=tok)
    texts = [
        "".join(chr(97 + (i * 7 + j) % 26) + (" " if j % 5 == 4 else "") for j in range(120))
        for i in range(8)
    ]
    batch = A.encode(texts)
    kw = dict(attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    lines = [
        f"model pair: 8 layers, d_model 256, batch {tuple(batch.shape)}, torch threads {torch.get_num_threads()}",
        f"{'N=M':>4} {'splice ms':>10} {'A[0,N)+B[M,L) ms':>17} {'ratio':>6} {'2 full fwd ms':>14} {'ratio':>6}",
    ]
    for layer in range(0, 9, 2):
        t = _time_layer(A, B, batch, kw, layer)
        lines.append(
            f"{layer:>4} {t['splice'] * 1e3:>10.1f} {t['reference'] * 1e3:>17.1f} "
            f"{t['splice'] / t['reference']:>6.3f} {t['full'] * 1e3:>14.1f} {t['splice'] / t['full']:>6.3f}"
        )
    noop = [(lambda n: True, lambda resid, hook: None)]
    t = best_times(
        {
            "plain": lambda: hf_a(input_ids=batch.input_ids, **kw),
            "hooked": lambda: A.logits(batch),
            "hooked_all": lambda: A.run_with_hooks(batch, fwd_hooks=noop),
        }
    )
    lines.append(
        f"plain HF forward {t['plain'] * 1e3:.1f} ms; HookedLM.logits {t['hooked'] * 1e3:.1f} ms "
        f"(ratio {t['hooked'] / t['plain']:.3f}); no-op hook on all {2 * A.n_layers} hook points "
        f"{t['hooked_all'] * 1e3:.1f} ms (ratio {t['hooked_all'] / t['plain']:.3f})"
    )
    return "\n".join(lines)


def _time_layer(A, B, batch, kw: dict, layer: int) -> dict:
    """Best-of times of the splice N=M=layer, of the cut HF models alone, and of two full forwards."""
    sp = stitch.Splice(A, B, source_layer=layer)
    prefix, suffix = cut(A.model, 0, layer), cut(B.model, layer, B.n_layers)
    state = A.residuals(batch, [layer])[layer]

    def reference():
        if layer:
            prefix.model(input_ids=batch.input_ids, **kw)
        suffix(inputs_embeds=state, **kw)

    def splice():
        sp.B.run_from(sp.map_states(sp.A.residuals(batch, [layer])[layer], _same(batch)), layer, batch)

    def full():
        A.model(input_ids=batch.input_ids, **kw)
        B.model(input_ids=batch.input_ids, **kw)

    return best_times({"splice": splice, "reference": reference, "full": full})


def _same(batch):
    from stitch.splice import Aligned

    return Aligned(batch, batch, None)


if __name__ == "__main__":
    report = main()
    print(report)
    out = Path(__file__).parent / "results" / "splice_cost.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report + "\n")
