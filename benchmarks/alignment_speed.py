"""Token alignment speed: stitch against a DP edit-distance aligner, and against tokenization + forward.

    python benchmarks/alignment_speed.py            # writes benchmarks/results/alignment_speed.txt

Baseline: the dynamic-time-warping aligner used in cross-tokenizer distillation and model fusion
(FuseLLM / DSKD style): an (n+1) x (m+1) DP table over the two token-string sequences, cost = the
edit distance between the two token strings (after stripping `Ġ`/`▁` markers), then a backtrack;
target_to_source[j] = the last source token paired with target token j. Pure Python as in those
codebases, with the edit distance memoised so repeated token pairs are free.

Measured side by side on the same texts with the real Llama-3 (source) and Mistral v0.3 (target)
tokenizers (the on-the-fly trained pair when PyPI is unreachable), on one CPU thread:
  1. stitch alignment (spans bookkeeping after the tokenizer call + batched align) vs the DP baseline;
  2. aligned tokens per second of `align_spans` on padded batches;
  3. per batch: alignment vs tokenization (both tokenizers) + a tiny-model forward (A to its last
     layer, B with logits).
"""

from __future__ import annotations

import inspect
import statistics
import sys
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stitch.alignment import align_spans, spans_from_ids, token_spans_batch  # noqa: E402
from tests import tokenizers_util as tu  # noqa: E402

torch.set_num_threads(1)
RESULTS = ROOT / "benchmarks" / "results" / "alignment_speed.txt"
UNICODE = " Unicode: naïve café, 日本語のテキスト、中文文本, emoji 😀🤗👍🏽, 𝔘𝔫𝔦, e\u0301.\n\tcode = [x ** 2 for x in y]\n"


def corpus(n_texts: int = 64, chars: int = 1200) -> list[str]:
    """Real prose and code: standard-library docstrings, cut into chunks, with some unicode mixed in."""
    import argparse
    import collections
    import json
    import logging
    import pathlib
    import re
    import typing

    docs = [
        inspect.getdoc(obj) or ""
        for m in (argparse, collections, json, logging, pathlib, re, typing)
        for _, obj in inspect.getmembers(m)
        if inspect.isclass(obj) or inspect.isfunction(obj)
    ]
    stream = "\n\n".join(d for d in docs if len(d) > 200)
    texts = []
    for k in range(n_texts):
        chunk = stream[k * chars : (k + 1) * chars]
        texts.append(chunk[: chars // 2] + UNICODE + chunk[chars // 2 :] if k % 4 == 0 else chunk)
    return texts


def tokenizers():
    a, b = tu.real_tokenizer("llama3"), tu.real_tokenizer("mistral")
    if a is None or b is None:
        return "trained byte-level BPE 2048 -> Unigram 512", tu.byte_level_bpe(), tu.sentencepiece_unigram()
    return "Llama-3 -> Mistral v0.3", a, b


@cache
def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def dtw_target_to_source(src: list[str], tgt: list[str]) -> list[int]:
    """The DP baseline: DTW over token strings with edit-distance cost, then backtrack."""
    n, m, inf = len(src), len(tgt), float("inf")
    table = [[inf] * (m + 1) for _ in range(n + 1)]
    table[0][0] = 0.0
    for i in range(1, n + 1):
        row, up, s = table[i], table[i - 1], src[i - 1]
        for j in range(1, m + 1):
            row[j] = edit_distance(s, tgt[j - 1]) + min(up[j], row[j - 1], up[j - 1])
    i, j, t2s = n, m, [-1] * m
    while i > 0 and j > 0:
        t2s[j - 1] = max(t2s[j - 1], i - 1)
        step = min((table[i - 1][j - 1], 0), (table[i - 1][j], 1), (table[i][j - 1], 2))[1]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return t2s


def token_strings(tok, ids: list[int]) -> list[str]:
    return [p.replace("Ġ", " ").replace("▁", " ") for p in tok.convert_ids_to_tokens(ids)]


def pad(spans_list, side: str = "right") -> dict[str, torch.Tensor]:
    """Padded tensors of a list of TokenSpans (what stitch's Batch holds, with byte spans)."""
    width = max(len(ts.ids) for ts in spans_list)
    out = {
        "ids": torch.zeros(len(spans_list), width, dtype=torch.long),
        "spans": torch.full((len(spans_list), width, 2), -1, dtype=torch.long),
        "valid": torch.zeros(len(spans_list), width, dtype=torch.bool),
        "special": torch.zeros(len(spans_list), width, dtype=torch.bool),
    }
    for row, ts in enumerate(spans_list):
        n = len(ts.ids)
        out["ids"][row, :n], out["spans"][row, :n] = torch.tensor(ts.ids), torch.tensor(ts.byte_spans)
        out["valid"][row, :n], out["special"][row, :n] = True, torch.tensor(ts.special)
    return out


def align(src: dict, tgt: dict):
    return align_spans(
        src["spans"][..., 1],
        src["valid"],
        src["special"],
        tgt["spans"],
        tgt["valid"],
        tgt["special"],
        tgt["ids"],
    )


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def encode(tok, texts):
    enc = tok(texts, return_special_tokens_mask=True, return_attention_mask=False)
    return list(zip(enc["input_ids"], enc["special_tokens_mask"], strict=True))


def stitch_alignment_time(a, b, texts, repeat: int = 5) -> tuple[float, float]:
    """(spans bookkeeping after the tokenizer calls + batched alignment, padding into tensors).

    Padding is timed apart: building the padded batch is done by encoding anyway.
    """
    ea, eb = encode(a, texts), encode(b, texts)
    sa, sb = spans_from_ids(a, texts, ea), spans_from_ids(b, texts, eb)
    pa, pb = pad(sa), pad(sb)
    spans = best(lambda: (spans_from_ids(a, texts, ea), spans_from_ids(b, texts, eb)), repeat)
    aligned = best(lambda: align(pa, pb), repeat)
    padding = best(lambda: (pad(sa), pad(sb)), repeat)
    return spans + aligned, padding


def versus_dp(a, b, texts) -> list[str]:
    ea, eb = encode(a, texts), encode(b, texts)
    edit_distance.cache_clear()
    dp = best(
        lambda: [
            dtw_target_to_source(token_strings(a, x), token_strings(b, y))
            for (x, _), (y, _) in zip(ea, eb, strict=True)
        ],
        repeat=1,
    )
    ours, padding = stitch_alignment_time(a, b, texts)
    sa, sb = pad(spans_from_ids(a, texts, ea)), pad(spans_from_ids(b, texts, eb))
    align_only = best(lambda: align(sa, sb))
    n_src, n_tgt = sum(len(x) for x, _ in ea), sum(len(y) for y, _ in eb)
    return [
        f"DP baseline vs stitch on {len(texts)} texts ({n_src} source, {n_tgt} target tokens), same token ids:",
        f"  DP edit-distance aligner         {dp * 1e3:10.1f} ms  ({n_tgt / dp:12,.0f} target tokens/s)",
        f"  stitch spans + align             {ours * 1e3:10.2f} ms  ({n_tgt / ours:12,.0f} target tokens/s)  "
        f"speed-up {dp / ours:6.0f}x  (goal >= 100x)",
        f"  stitch align only                {align_only * 1e3:10.2f} ms  ({n_tgt / align_only:12,.0f} target "
        f"tokens/s)  speed-up {dp / align_only:6.0f}x",
        f"  (padding both tokenizations into tensors, done by encoding anyway: {padding * 1e3:.2f} ms)",
    ]


def throughput(a, b, texts, batch_size: int = 64) -> list[str]:
    sa, sb = pad(token_spans_batch(a, texts[:batch_size])), pad(token_spans_batch(b, texts[:batch_size]))
    seconds = best(lambda: align(sa, sb), repeat=20)
    n_src, n_tgt = int(sa["valid"].sum()), int(sb["valid"].sum())
    return [
        f"align_spans on a padded batch of {batch_size} texts ({n_src} source + {n_tgt} target tokens), 1 thread:",
        f"  {seconds * 1e3:.2f} ms: {n_tgt / seconds:,.0f} target tokens/s, {(n_src + n_tgt) / seconds:,.0f} "
        "source+target tokens/s (goal >= 1,000,000)",
    ]


def tiny_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def per_batch_share(a, b, texts, batch_size: int = 8) -> list[str]:
    model_a, model_b = tiny_model(len(a)), tiny_model(len(b))
    rows = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        tokenize = best(lambda chunk=chunk: (a(chunk), b(chunk)), repeat=3)
        pa, pb = pad(token_spans_batch(a, chunk)), pad(token_spans_batch(b, chunk))
        ea = {"input_ids": pa["ids"], "attention_mask": pa["valid"].long()}
        eb = {"input_ids": pb["ids"], "attention_mask": pb["valid"].long()}
        with torch.no_grad():
            forward = best(lambda ea=ea, eb=eb: (model_a.model(**ea), model_b(**eb)), repeat=3)
        alignment, _ = stitch_alignment_time(a, b, chunk, repeat=3)
        rows.append((alignment, tokenize, forward))
    share = statistics.median(al / (tok + fw) for al, tok, fw in rows)
    al, tok, fw = (statistics.median(r[k] for r in rows) for k in range(3))
    return [
        f"per batch of {batch_size} texts (median of {len(rows)} batches; tiny Llama models, width 64, 2 layers):",
        f"  tokenization (both) {tok * 1e3:.2f} ms + forward (A to layer L, B with logits) {fw * 1e3:.2f} ms; "
        f"alignment {al * 1e3:.2f} ms",
        f"  alignment / (tokenization + forward) = {share:.1%} (goal <= 5%); alignment / tokenization alone = "
        f"{al / tok:.0%}",
    ]


def spans_overhead(a, b, texts) -> list[str]:
    lines = ["spans bookkeeping vs the bare tokenizer call (all texts, one call each):"]
    for name, tok in (("source", a), ("target", b)):
        bare = best(lambda tok=tok: tok(texts), repeat=3)
        spans = best(lambda tok=tok: token_spans_batch(tok, texts), repeat=3)
        lines.append(
            f"  {name}: tokenizer {bare * 1e3:.1f} ms, token_spans_batch {spans * 1e3:.1f} ms "
            f"(+{(spans - bare) / bare:.0%})"
        )
    return lines


def main() -> None:
    pair, a, b = tokenizers()
    texts = corpus()
    token_spans_batch(a, texts[:2]), token_spans_batch(b, texts[:2])  # builds each tokenizer's table once
    lines = [
        f"alignment_speed: {pair}, {len(texts)} texts of ~{len(texts[0])} characters, torch threads=1",
        "",
    ]
    sections = (
        lambda: versus_dp(a, b, texts[:4]),
        lambda: throughput(a, b, texts),
        lambda: per_batch_share(a, b, texts[:32]),
        lambda: spans_overhead(a, b, texts),
    )
    for make in sections:
        section = make()
        lines += [*section, ""]
        print("\n".join(section) + "\n", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
