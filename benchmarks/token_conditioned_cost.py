"""Token-conditioned splices: their cost against the plain splice, and per-class CE of every mode on real text.

    python benchmarks/token_conditioned_cost.py   # prints both tables; writes benchmarks/results/token_conditioned_cost.txt

1. Cost (goal <= 1.15x): two random Llama-style models (8 layers, width 256, fp32, one torch thread) with
   different tokenizers (byte-level BPE of 1200 vs 300 tokens, so B's tokens split A's and the conditioning is
   really computed), batch 8 x ~130 B tokens. The whole `Splice.__call__` (tokenization, pairing, A, adapter,
   B) with an Affine adapter against the same call with a TokenConditioned one (window 2); and the same two
   from a precomputed pairing and A states (adapter + conditioning + B only). Best of interleaved repeats.
2. Per-class CE on real text: the demo's real-text models are not on main, so two tiny Llama-style models
   (4 layers, width 64) are trained briefly here on Python's own documentation text (`pydoc_data.topics`,
   shipped with CPython), with byte-level BPE tokenizers trained on the same text (2000 tokens for A, 400 for
   B: B's tokens split A's). Closed-form fits (relative ridge 1e-2) on 240 chunks, scored on 60 held-out chunks at N = M = 2:
   plain target grid, token-conditioned target grid, hybrid (B reads its own tokens; a different question),
   and the source grid.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
import transformers
from pydoc_data.topics import topics
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import stitch
from analyses.sweep import layer_sweep
from stitch.adapters import Affine, TokenConditioned
from stitch.testing import byte_bpe_tokenizer, tiny_model, train_briefly

REPEATS = 15
torch.set_num_threads(1)  # one thread: far less disturbed by other load on a small machine


def best_times(fns: dict, repeats: int = REPEATS) -> dict:
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def cost() -> list[str]:
    tok_a, tok_b = byte_bpe_tokenizer(1200, bos=False), byte_bpe_tokenizer(300)
    A = stitch.load_model(tiny_model("llama", len(tok_a), n_layers=8, d_model=256, n_ctx=512, seed=0), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("llama", len(tok_b), n_layers=8, d_model=256, n_ctx=512, seed=1), tokenizer=tok_b)
    words = "the quick brown fox jumps over lazy dog while researchers stitch residual streams".split()
    texts = [" ".join(words[(i * 3 + j) % len(words)] for j in range(24)) for i in range(8)]
    pairing = stitch.alignment.pairing.pair_texts(A, B, texts)
    lines = [
        f"cost: 8 layers, d_model 256, B batch {tuple(pairing.target.shape)}, A batch {tuple(pairing.source.shape)}, "
        f"lagging share of B positions {pairing.class_mask('lagging').sum().item() / pairing.target.attention_mask.sum().item():.2f}, "
        f"torch threads {torch.get_num_threads()}",
        f"{'N=M':>4} {'plain ms':>9} {'conditioned ms':>15} {'ratio':>6} | {'plain B-side ms':>16} {'conditioned':>12} {'ratio':>6}",
    ]
    for layer in (2, 4, 6):
        plain = stitch.Splice(A, B, layer, adapter=Affine(256, 256))
        conditioned = stitch.Splice(A, B, layer, adapter=TokenConditioned(256, 256, window=2))
        states = A.residuals(pairing.source, [layer])[layer]
        t = best_times({
            "plain": lambda: plain(texts), "conditioned": lambda: conditioned(texts),
            "plain_b": lambda: plain.spliced_logits(states, pairing),
            "conditioned_b": lambda: conditioned.spliced_logits(states, pairing),
        })
        lines.append(
            f"{layer:>4} {t['plain'] * 1e3:>9.1f} {t['conditioned'] * 1e3:>15.1f} {t['conditioned'] / t['plain']:>6.3f} | "
            f"{t['plain_b'] * 1e3:>16.1f} {t['conditioned_b'] * 1e3:>12.1f} {t['conditioned_b'] / t['plain_b']:>6.3f}"
        )
    return lines


def bpe(texts: list[str], vocab_size: int, bos: bool):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = (
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)]) if bos
        else processors.ByteLevel(trim_offsets=False)
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def chunks(n: int, size: int = 240) -> list[str]:
    text = " ".join(" ".join(topics[k].split()) for k in sorted(topics))
    return [text[i : i + size] for i in range(0, n * size, size)]


def per_class() -> list[str]:
    texts = chunks(300)
    train, held_out = texts[:240], texts[240:]
    tok_a, tok_b = bpe(train, 2000, bos=False), bpe(train, 400, bos=True)
    start = time.perf_counter()
    A = stitch.load_model(train_briefly(tiny_model("llama", len(tok_a), 4, 64, 256, seed=1), tok_a, train[:96], steps=60, lr=1e-2), tokenizer=tok_a)
    B = stitch.load_model(train_briefly(tiny_model("llama", len(tok_b), 4, 64, 512, seed=2), tok_b, train[:96], steps=60, lr=1e-2), tokenizer=tok_b)
    trained = time.perf_counter() - start
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for kind in ("affine", "token_conditioned"):
            rows += layer_sweep(
                A, B, train, held_out, pairs=[(2, 2)], kind=kind, ridge=1e-2, alignment=["target", "source"],
                injection=["residual", "hybrid"], baseline=False, progress=False,
            )
    native = rows[0].classes
    lines = [
        f"per-class CE (nats/label), pydoc_data.topics chunks of 240 chars, {len(train)} train / {len(held_out)} "
        f"held out, A: BPE 2000 no BOS, B: BPE 400 + BOS, 4 layers x 64 each, trained {trained:.0f} s; N = M = 2",
        f"{'mode':<50} {'shared':>8} {'lagging':>8} {'none':>8} {'all':>8} {'LR shared':>10} {'B blocks':>9}",
        f"{'B native':<50} " + " ".join(f"{native[c].ce_native:>8.3f}" for c in ("shared", "lagging", "none", "all")),
        f"{'context-free unigram':<50} " + " ".join(f"{native[c].ce_context_free:>8.3f}" for c in ("shared", "lagging", "none", "all")),
        f"class sizes (target grid) {', '.join(f'{c}={native[c].n_tokens}' for c in ('shared', 'lagging', 'none', 'all'))}",
    ]
    for r in rows:
        if r.alignment == "source" and r.kind == "token_conditioned":
            continue  # on the source grid the conditioning is zero: the same adapter as the affine one
        name = f"{r.kind}, {r.injection} ({r.positions}), {r.alignment} grid"
        ce = " ".join(
            f"{r.classes[c].ce_spliced:>8.3f}" if r.classes[c].n_tokens else f"{'-':>8}"
            for c in ("shared", "lagging", "none", "all")
        )
        lines.append(f"{name:<50} {ce} {r.loss_recovered:>10.3f} {'[{}, {})'.format(*r.blocks_run['B']):>9}")
    lines.append("hybrid rows answer " + rows[1].answers)
    return lines


def main() -> str:
    return "\n".join([*cost(), "", *per_class()])


if __name__ == "__main__":
    report = main()
    print(report)
    out = Path(__file__).parent / "results" / "token_conditioned_cost.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report + "\n")
