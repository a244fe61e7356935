"""Training throughput: the seeds' loop against stitch's, on the models every step and from the cache.

    python benchmarks/train_throughput.py      # prints a table; writes benchmarks/results/train_throughput.txt

Model pair: two random Llama-style models (8 layers, width 256, vocab 300, fp32, CPU, one thread), splice
4 → 4 (the middle), an affine adapter, batch 8 texts of ~130 tokens, AdamW. Tokens/s counts B's labels.
- (a) seeds: both models in full with every hidden state returned, every step (A's layer N read from
  `hidden_states`, B run in full with a hook replacing its layer-M input; for a representation loss B's
  own layer-M state read from a second full forward's `hidden_states`);
- (b) stitch's step from the models (`LiveInputs`): A runs blocks [0, N), B [M, L) (or [0, M) for targets);
- (c) stitch's step from an activation store built once (`CachedInputs`): no A forward, and no B forward
  at all for a representation loss. The one-off cost of building the store is reported beside.
Times are the best of interleaved repeats; peak memory is the process's max RSS growth during each loop.
"""

from __future__ import annotations

import resource
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


def timed(fn) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for step in range(STEPS):
        fn(step)
    return time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    A, B = models()
    labels = sum(int(B.encode(TEXTS[i : i + 8]).attention_mask.sum() - 8) for i in (0, 8)) / 2
    lines = [f"A, B: Llama-style, 8 layers, width 256; splice {LAYER} -> {LAYER}; batch 8 texts, ~{labels:.0f} labels/step",
             f"{'objective':<8} {'loop':<28} {'tokens/s':>9} {'x seeds':>8} {'peak MB':>8}"]  # fmt: skip
    for name in ("ce", "mse"):
        objective = parse_objective(name)
        terms = [Term(name, 0, objective, 1.0)]
        targets = [LAYER] if name == "mse" else []
        t0 = time.perf_counter()
        store = collect_activations(A, B, TEXTS, [LAYER], targets, batch_size=8)
        build = time.perf_counter() - t0
        loops = {}
        for label in ("(a) seeds", "(b) stitch, from the models", "(c) stitch, from the cache"):
            adapter = stitch.adapters.build_adapter("affine", d_source=256, d_target=256)
            opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
            sp = stitch.Splice(A, B, LAYER, adapter=adapter)
            pick = lambda s: list(range(8 * (s % 2), 8 * (s % 2) + 8))  # noqa: E731
            if label.startswith("(a)"):
                loops[label] = lambda s, a=adapter, o=opt, p=pick, n=name: seeds_step(
                    A, B, a, o, [TEXTS[i] for i in p(s)], n
                )
            else:
                inputs = LiveInputs(A, B, TEXTS, [LAYER], targets) if "(b)" in label else CachedInputs(store)
                loops[label] = lambda s, sp=sp, i=inputs, o=opt, t=terms, p=pick: stitch_step(
                    sp, i, o, t, p(s)
                )
        best = {k: (float("inf"), 0.0) for k in loops}
        for _ in range(REPEATS):
            for k, fn in loops.items():
                seconds, memory = timed(fn)
                best[k] = (min(best[k][0], seconds), max(best[k][1], memory))
        seeds = labels * STEPS / best["(a) seeds"][0]
        for k, (seconds, memory) in best.items():
            rate = labels * STEPS / seconds
            lines.append(f"{name:<8} {k:<28} {rate:9.0f} {rate / seeds:8.2f} {memory:8.1f}")
        lines.append(f"{name:<8} {'(c) one-off store build':<28} {build:8.2f}s for {len(TEXTS)} texts")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "train_throughput.txt"
    out.write_text(f"{text}\n(best of {REPEATS} interleaved repeats of {STEPS} steps, one torch thread)\n")


if __name__ == "__main__":
    main()
