"""`stitch train`: gradient-based adapter training, in one process or under torchrun (DDP over the adapter).

    $ stitch train --source-model meta-llama/Llama-3.2-3B --target-model meta-llama/Llama-3.1-8B \\
          --source-layer 14 --target-layer 16 --kind lowrank --adapter-options rank=64 \\
          --texts train.txt --eval-texts eval.txt --steps 2000 --batch-size 32 --out runs/train
    $ torchrun --nproc-per-node 8 --no-python stitch train --config train.yaml
    >>> run(TrainCommandConfig(source_model="a/", target_model="b/", texts="t.txt", out="runs/t", source_layer=8))

Writes (rank 0 only) `OUT/adapter.safetensors` with `OUT/adapter_config.json` (or `OUT/pairs/N-M/` per
layer pair), `OUT/best/` (the best evaluation's adapters), `OUT/metrics.jsonl`, `OUT/training.html` (the
training curves), `OUT/checkpoints/` and `OUT/config.json`; rerunning the same command continues from the latest checkpoint.
Under torchrun, `--device auto` puts each rank on `cuda:LOCAL_RANK` (or the CPU without CUDA).
The training options are those of `stitch.training.loop.TrainConfig`; see docs/training.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from analyses.cka import linear_cka
from analyses.figures.training import training_curves
from analyses.report import Section, write_report
from stitch.cli.common import (
    ModelPairConfig,
    load_models,
    option,
    read_texts,
    save_config,
)
from stitch.data import chunk_texts, pack_texts
from stitch.training import distributed
from stitch.training.loop import TrainConfig, TrainResult, train


@dataclass(frozen=True, kw_only=True)
class TrainCommandConfig(TrainConfig, ModelPairConfig):
    texts: str = option(
        help="training texts: a file (one text per line, or .jsonl with --text-field), or hf:DATASET[:CONFIG]"
    )
    eval_texts: str | None = option(None, help="held-out texts scored during training, as --texts (default: none)")
    text_field: str = option("text", help="the field holding the text in .jsonl files and datasets")
    max_tokens: int = option(0, help="cut texts to at most this many of A's tokens (0: keep them whole)")
    stride: int = option(0, help="tokens shared by consecutive chunks of a cut text")
    pack: bool = option(False, help="join short texts up to --max-tokens (needs --max-tokens)")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ValueError(f"max_tokens: expected an integer >= 0, got {self.max_tokens!r}")
        if self.max_tokens and not 0 <= self.stride < self.max_tokens:
            raise ValueError(f"stride: expected an integer in [0, max_tokens={self.max_tokens}), got {self.stride!r}")
        if (self.pack or self.stride) and not self.max_tokens:
            raise ValueError("max_tokens: --pack and --stride need --max-tokens > 0")


def run(config: TrainCommandConfig) -> TrainResult:
    """Read the texts, join the process group (if any), load both models on this rank's device, train."""
    texts = read_texts("texts", config.texts, config.text_field)
    eval_texts = None if config.eval_texts is None else read_texts("eval_texts", config.eval_texts, config.text_field)
    with distributed.session() as dist:
        on_rank = config
        if dist.is_distributed and config.device == "auto":  # one device per rank, not all on cuda:0
            on_rank = dataclasses.replace(config, device=str(dist.device))
        A, B = load_models(on_rank)
        texts, eval_texts = _windows(texts, A, config), eval_texts and _windows(eval_texts, A, config)
        metadata = {"source_model": config.source_model, "target_model": config.target_model}
        result = train(A, B, texts, config, eval_texts=eval_texts, dist=dist, metadata=metadata, similarity=linear_cka)
        if dist.is_main:
            out = Path(config.out)
            save_config(config, out / "config.json")
            write_report(out / "training.html", [Section("Training curves", training_curves(result.history))],
                         title=f"training {out.name}")  # fmt: skip
            print(f"wrote {out} (adapter, metrics.jsonl, training.html) after {result.step} steps")
    return result


def _windows(texts: list[str], A, config: TrainCommandConfig) -> list[str]:
    """Texts cut (and packed) to --max-tokens of A's tokens, or as read."""
    if not config.max_tokens:
        return texts
    if config.pack:
        return pack_texts(texts, A, config.max_tokens)
    return chunk_texts(texts, A, config.max_tokens, config.stride)
