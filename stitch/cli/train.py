"""`stitch train`: gradient-based adapter training, in one process or under torchrun (DDP over the adapter).

    $ stitch train --source-model meta-llama/Llama-3.2-3B --target-model meta-llama/Llama-3.1-8B \\
          --source-layer 14 --target-layer 16 --kind lowrank --adapter-options rank=64 \\
          --train-texts train.txt --eval-texts eval.txt --steps 2000 --batch-size 32 --out runs/train
    $ torchrun --nproc-per-node 8 --no-python stitch train --config train.yaml
    >>> run(TrainCommandConfig(source_model="a/", target_model="b/", train_texts="t.txt", out="runs/t", source_layer=8))

Writes (rank 0 only) `OUT/adapter.safetensors` with `OUT/adapter_config.json` (or `OUT/pairs/N-M/` per
layer pair), `OUT/best/` (the best evaluation's adapters), `OUT/metrics.jsonl`, `OUT/training.html` (the
training curves), `OUT/checkpoints/` and `OUT/config.yaml`; rerunning the same command continues from the latest checkpoint
(other run options, models of other widths, fewer --steps or --no-resume are refused before the models load,
from the checkpoint's files: `stitch.cli.saved.check_resume`).
Under torchrun, `--device auto` puts each rank on `cuda:LOCAL_RANK` (or the CPU without CUDA).
The training options are those of `stitch.training.config.TrainConfig`; see docs/training.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from analyses.cka import linear_cka
from analyses.figures.training import training_curves
from analyses.report import Section, write_report
from stitch.cli.common import load_models, read_texts, save_run_config
from stitch.cli.train_config import TrainCommandConfig
from stitch.data import pack_texts
from stitch.training import distributed
from stitch.training.loop import TrainResult, train

__all__ = ["TrainCommandConfig", "run"]


def run(config: TrainCommandConfig) -> TrainResult:
    """Read the texts, join the process group (if any), load both models on this rank's device, train."""
    texts = read_texts("train_texts", config.train_texts, config.text_field)
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
            ran = config if dist.is_distributed else on_rank  # under torchrun each rank picks its device
            save_run_config(ran, out / "config.yaml", *(() if dist.is_distributed else (A, B)))
            write_report(out / "training.html", [Section("Training curves", training_curves(result.history))],
                         title=f"training {out.name}")  # fmt: skip
            print(f"wrote {out} (adapter, metrics.jsonl, training.html) after {result.step} steps")
    return result


def _windows(texts: list[str], A, config: TrainCommandConfig) -> list[str]:
    """Texts packed to --max-tokens of A's tokens with --pack, or as read (`train` cuts them to --max-length)."""
    return pack_texts(texts, A, config.max_tokens) if config.pack else texts
