"""`stitch cka`: every layer of A against every layer of B — a similarity matrix and an HTML report.

    $ stitch cka --source-model meta-llama/Llama-3.1-8B --target-model meta-llama/Llama-3.2-3B \\
          --texts texts.txt --pairing shared --out runs/cka
    $ stitch cka ... --control random-init      # and the same matrix on random-init copies of A and B
    >>> run(CkaConfig(source_model="a/", target_model="b/", texts="texts.txt", out="runs/cka"))

Writes `OUT/similarity.safetensors` (tensor `matrix` [A.n_layers + 1, B.n_layers + 1], plus the
permutation null's tensors `null_mean`, `null_std`, `z`, `p_value`, `calibrated` with
`--null-permutations`, and `control` and `excess` [same shape] with `--control`), `OUT/similarity.json`
(pairing, measure, n, model names, shape, null and control settings; also in the safetensors header),
`OUT/report.html` (heatmap, excess over the control when there is one, best-match curve) and
`OUT/config.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch

from analyses.figures import best_match_curve, similarity_heatmap
from analyses.layer_similarity import LayerSimilarity, layer_similarity
from analyses.report import Section, write_report
from stitch.cli.common import load_models, read_texts, save_run_config, write_json
from stitch.cli.configs import CkaConfig
from stitch.files import write_atomic

__all__ = ["CkaConfig", "metadata", "run"]

_NULL_TENSORS = ("null_mean", "null_std", "z", "p_value", "calibrated")



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
        control=config.control,
    )
    out = Path(config.out)
    _save_matrix(rec, out)
    _save_report(rec, out, config)
    save_run_config(config, out / "config.yaml", A, B)
    print(f"wrote {out / 'similarity.safetensors'} and {out / 'report.html'}")
    return rec


def metadata(rec: LayerSimilarity) -> dict:
    """What the matrix means (everything of the record but its tensors and texts)."""
    meta = {k: v for k, v in rec.to_dict().items() if k not in ("matrix", "texts", "null", "control")}
    meta.update(n_texts=len(rec.texts), shape=list(rec.matrix.shape))
    if rec.null is not None:
        meta.update(null_permutations=rec.null.n_permutations, null_seed=rec.null.seed)
    return meta


def _save_matrix(rec: LayerSimilarity, out: Path) -> None:
    tensors = {"matrix": rec.matrix}
    if rec.null is not None:
        tensors.update({k: getattr(rec.null, k) for k in _NULL_TENSORS})
    if rec.control is not None:
        tensors.update(control=rec.control, excess=rec.excess())
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}  # float64, as computed
    meta = metadata(rec)
    header = {"stitch_layer_similarity": json.dumps(meta)}
    write_atomic(out / "similarity.safetensors", safetensors.torch.save(tensors, metadata=header))
    write_json(out / "similarity.json", meta)


def _save_report(rec: LayerSimilarity, out: Path, config: CkaConfig) -> None:
    note = f"{rec.n} paired samples ({rec.pairing} pairing) from {len(rec.texts)} texts in {config.texts}"
    sections = [Section("Similarity by layer", similarity_heatmap(rec), note=note)]
    if rec.control is not None:
        why = f"the same matrix on {rec.control_kind} copies of both models (seed {rec.control_seed})"
        figure = similarity_heatmap(rec, relative_to="control")
        sections.append(Section(f"Excess over the {rec.control_kind} control", figure, note=why))
    sections.append(Section("Best-matching target layer", best_match_curve(rec)))
    write_report(out / "report.html", sections, title=f"{rec.measure}: {rec.source} vs {rec.target}")
