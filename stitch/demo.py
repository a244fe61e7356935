"""The offline demo: two tiny random models built on the fly, the self-stitch check and a splice sweep.

>>> from stitch.demo import DemoConfig, run_demo
>>> records = run_demo(DemoConfig(n_layers=4))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import stitch
from stitch.config import Config
from stitch.toy import CORPUS, byte_bpe_tokenizer, tiny_model


@dataclass(frozen=True)
class DemoConfig(Config):
    n_layers: int = 4
    d_model: int = 64
    seed: int = 0


def run_demo(config: DemoConfig = DemoConfig()) -> list[dict]:
    """Print and return, per layer, the self-stitch max logit difference and A → B splice losses."""
    tok = byte_bpe_tokenizer()
    A = stitch.load_model(
        tiny_model("llama", len(tok), config.n_layers, config.d_model, seed=config.seed), tokenizer=tok
    )
    B = stitch.load_model(
        tiny_model("qwen2", len(tok), config.n_layers, config.d_model, seed=config.seed + 1), tokenizer=tok
    )
    texts = CORPUS[:6]
    native_a, native_b = A.logits(texts), stitch.Splice(B, B, source_layer=0)(texts).loss.item()
    print(f"A = {A}\nB = {B}\nB's native loss on {len(texts)} texts: {native_b:.4f}")
    print(f"{'layer':>5} {'self-stitch max |Δlogit|':>25} {'A→B spliced loss':>17}")
    records = []
    with torch.no_grad():
        for layer in range(config.n_layers + 1):
            self_diff = (stitch.Splice(A, A, source_layer=layer)(texts).logits - native_a).abs().max().item()
            loss = stitch.Splice(A, B, source_layer=layer)(texts).loss.item()
            records.append({"layer": layer, "self_stitch_max_diff": self_diff, "spliced_loss": loss})
            print(f"{layer:>5} {self_diff:>25.2e} {loss:>17.4f}")
    return records
