"""`stitch train`: gradient-based adapter training, in one process or under torchrun (DDP over the adapter).

    $ stitch train --source-model meta-llama/Llama-3.2-3B --target-model meta-llama/Llama-3.1-8B \\
          --source-layer 14 --target-layer 16 --kind lowrank --adapter-options rank=64 \\
          --texts train.txt --eval-texts eval.txt --steps 2000 --batch-size 32 --out runs/train
    $ torchrun --nproc-per-node 8 --no-python stitch train --config train.yaml
    >>> run(TrainCommandConfig(source_model="a/", target_model="b/", texts="t.txt", out="runs/t", source_layer=8))

Writes (rank 0 only) `OUT/adapter.safetensors` with `OUT/adapter_config.json`, `OUT/metrics.jsonl`,
`OUT/checkpoints/` and `OUT/config.json`; rerunning the same command continues from the latest checkpoint.
Under torchrun, `--device auto` puts each rank on `cuda:LOCAL_RANK` (or the CPU without CUDA).
The training options are those of `stitch.training.loop.TrainConfig`; see docs/training.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from stitch.cli.common import (
    ModelPairConfig,
    load_models,
    option,
    read_texts,
    save_config,
)
from stitch.training import distributed
from stitch.training.loop import TrainConfig, TrainResult, train


@dataclass(frozen=True, kw_only=True)
class TrainCommandConfig(TrainConfig, ModelPairConfig):
    texts: str = option(help="training text file: one text per line, or .jsonl with a 'text' field")
    eval_texts: str | None = option(None, help="held-out text file scored during training (default: none)")


def run(config: TrainCommandConfig) -> TrainResult:
    """Read the texts, join the process group (if any), load both models on this rank's device, train."""
    texts = read_texts("texts", config.texts)
    eval_texts = None if config.eval_texts is None else read_texts("eval_texts", config.eval_texts)
    with distributed.session() as dist:
        on_rank = config
        if dist.is_distributed and config.device == "auto":  # one device per rank, not all on cuda:0
            on_rank = dataclasses.replace(config, device=str(dist.device))
        A, B = load_models(on_rank)
        metadata = {"source_model": config.source_model, "target_model": config.target_model}
        result = train(A, B, texts, config, eval_texts=eval_texts, dist=dist, metadata=metadata)
        if dist.is_main:
            save_config(config, Path(config.out) / "config.json")
            print(f"wrote {Path(config.out) / 'adapter.safetensors'} after {result.step} steps")
    return result
