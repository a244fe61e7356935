"""Small language models pre-trained on the standard library's text, cached: the demo's and notebooks' pair.

    >>> from stitch import zoo
    >>> A, B, infos = zoo.demo_pair()              # full: ~minutes the first time, seconds once cached
    >>> A, B, infos = zoo.demo_pair(quick=True)    # seconds: what the test suite runs
    >>> infos["A"]["held_out"]                     # {"ce_native": ..., "ce_context_free": ..., "n_tokens": ...}

The pair mirrors a real cross-tokenizer pair (Llama-3.1-8B → Mistral-7B-v0.3) in miniature: A is a Llama
with a byte-level BPE, B a Mistral of another width with a sentencepiece-style BPE and a
quarter of A's vocabulary. `PAIRS` holds both specs of each size; `stitch.zoo.cache` keys and stores them.
"""

from __future__ import annotations

import os

from stitch.corpus import Corpus, stdlib_corpus
from stitch.models.hooked import HookedLM
from stitch.zoo.cache import ENV, cache_key, cache_root, cached_model, model_dir
from stitch.zoo.pretrain import ModelSpec, build_tokenizer, held_out_ce, pretrain
from stitch.zoo.tokenizers import byte_level_bpe, sentencepiece_bpe

PAIRS = {
    "full": (
        ModelSpec(name="A", family="llama", tokenizer="byte_bpe", vocab_size=4096, n_layers=4, d_model=64,
                  steps=600),
        ModelSpec(name="B", family="mistral", tokenizer="sentencepiece_bpe", vocab_size=1024, n_layers=4,
                  d_model=96, steps=600, seed=1),
    ),
    "quick": (
        ModelSpec(name="A", family="llama", tokenizer="byte_bpe", vocab_size=1024, n_layers=2, d_model=32,
                  n_ctx=64, steps=40, warmup=5),
        ModelSpec(name="B", family="mistral", tokenizer="sentencepiece_bpe", vocab_size=400, n_layers=2,
                  d_model=48, n_ctx=64, steps=40, warmup=5, seed=1),
    ),
}
QUICK_TEXTS = (160, 24)  # training and held-out texts of the quick corpus


def demo_corpus(quick: bool = False) -> Corpus:
    """The standard-library corpus; `quick`: its first QUICK_TEXTS training and held-out texts."""
    corpus = stdlib_corpus()
    if not quick:
        return corpus
    n_train, n_held = QUICK_TEXTS
    return Corpus(corpus.train_items[:n_train], corpus.held_out_items[:n_held], f"{corpus.sha256}-quick{QUICK_TEXTS}")


def demo_pair(
    quick: bool = False, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[HookedLM, HookedLM, dict]:
    """(A, B, {"A": info, "B": info}) of `PAIRS["quick" | "full"]`, trained on `demo_corpus(quick)` or cached."""
    corpus = demo_corpus(quick)
    models, infos = {}, {}
    for spec in PAIRS["quick" if quick else "full"]:
        models[spec.name], infos[spec.name] = cached_model(spec, corpus, cache_dir, progress)
    return models["A"], models["B"], infos


__all__ = [
    "ENV", "PAIRS", "ModelSpec", "build_tokenizer", "byte_level_bpe", "cache_key", "cache_root", "cached_model",
    "demo_corpus", "demo_pair", "held_out_ce", "model_dir", "pretrain", "sentencepiece_bpe",
]
