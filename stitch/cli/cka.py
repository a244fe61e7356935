"""`stitch cka`: every layer of A against every layer of B — a similarity matrix and an HTML report.

    $ stitch cka --source-model meta-llama/Llama-3.1-8B --target-model meta-llama/Llama-3.2-3B \\
          --texts texts.txt --pairing shared --out runs/cka
    >>> run(CkaConfig(source_model="a/", target_model="b/", texts="texts.txt", out="runs/cka"))

Writes `OUT/similarity.safetensors` (tensor `matrix` [A.n_layers + 1, B.n_layers + 1], plus the
permutation null's tensors `null_mean`, `null_std`, `z`, `p_value`, `calibrated` with
`--null-permutations`), `OUT/similarity.json` (pairing, measure, n, model names, shape, null settings;
also in the safetensors header), `OUT/report.html` (heatmap, best-match curve) and `OUT/config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch

from analyses.figures import best_match_curve, similarity_heatmap
from analyses.layer_similarity import PAIRINGS, LayerSimilarity, layer_similarity
from analyses.report import Section, write_report
from analyses.similarity import MEASURES
from stitch.cli.common import (
    ModelPairConfig,
    load_models,
    option,
    read_texts,
    save_config,
    write_json,
)
from stitch.files import write_atomic

_NULL_TENSORS = ("null_mean", "null_std", "z", "p_value", "calibrated")


@dataclass(frozen=True, kw_only=True)
class CkaConfig(ModelPairConfig):
    texts: str = option(help="text file: one text per line, or .jsonl with a 'text' field")
    out: str = option(help="output directory")
    pairing: str = option(
        "mean", choices=PAIRINGS, help="mean: one sample per text; shared: per shared boundary"
    )
    measure: str = option("linear_cka", choices=tuple(MEASURES), help="similarity measure")
    null_permutations: int = option(0, help="permutations of the per-cell null (0: none)")
    seed: int = option(0, help="seed of the permutation null")
    batch_size: int = option(8, help="texts per forward")


def run(config: CkaConfig) -> LayerSimilarity:
    """Compute the layer-by-layer similarity, write the artifacts, and return the `LayerSimilarity`."""
    texts = read_texts("texts", config.texts)
    A, B = load_models(config)
    rec = layer_similarity(
        A,
        B,
        texts,
        pairing=config.pairing,
        measure=config.measure,
        null_permutations=config.null_permutations,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    out = Path(config.out)
    _save_matrix(rec, out)
    _save_report(rec, out, config)
    save_config(config, out / "config.json")
    print(f"wrote {out / 'similarity.safetensors'} and {out / 'report.html'}")
    return rec


def metadata(rec: LayerSimilarity) -> dict:
    """What the matrix means (everything of the record but its tensors and texts)."""
    meta = {k: v for k, v in rec.to_dict().items() if k not in ("matrix", "texts", "null")}
    meta.update(n_texts=len(rec.texts), shape=list(rec.matrix.shape))
    if rec.null is not None:
        meta.update(null_permutations=rec.null.n_permutations, null_seed=rec.null.seed)
    return meta


def _save_matrix(rec: LayerSimilarity, out: Path) -> None:
    tensors = {"matrix": rec.matrix}
    if rec.null is not None:
        tensors.update({k: getattr(rec.null, k) for k in _NULL_TENSORS})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}  # float64, as computed
    meta = metadata(rec)
    header = {"stitch_layer_similarity": json.dumps(meta)}
    write_atomic(out / "similarity.safetensors", safetensors.torch.save(tensors, metadata=header))
    write_json(out / "similarity.json", meta)


def _save_report(rec: LayerSimilarity, out: Path, config: CkaConfig) -> None:
    note = f"{rec.n} paired samples ({rec.pairing} pairing) from {len(rec.texts)} texts in {config.texts}"
    sections = [
        Section("Similarity by layer", similarity_heatmap(rec), note=note),
        Section("Best-matching target layer", best_match_curve(rec)),
    ]
    write_report(out / "report.html", sections, title=f"{rec.measure}: {rec.source} vs {rec.target}")
