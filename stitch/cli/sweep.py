"""`stitch sweep`: fit an adapter at every splice layer and score it on held-out text.

    $ stitch sweep --source-model meta-llama/Llama-3.1-8B --target-model meta-llama/Llama-3.2-3B \\
          --train-texts train.txt --eval-texts eval.txt --source-layers 0 8 16 24 32 --out runs/sweep
    $ stitch sweep ... --injection hybrid                       # B reads its own tokens; A only at shared positions
    $ stitch sweep ... --positions shared --kind token_conditioned --window 2 --ridge 0.01
    >>> run(SweepConfig(source_model="a/", target_model="b/", train_texts="t.txt", eval_texts="e.txt", out="s/"))

Writes `OUT/records.json` (one `analyses.sweep.SweepRecord.to_dict()` per splice, scores per position class),
`OUT/adapters/*.safetensors` (the fitted adapters), `OUT/report.html` (the sweep figure and the records as a
table) and `OUT/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from analyses.figures import sweep_figure
from analyses.report import Section, write_report
from analyses.sweep import SweepRecord, layer_sweep
from stitch.cli.common import load_models, read_texts, save_run_config, splice_models, write_json
from stitch.cli.configs import SweepConfig, parse_pair
from stitch.splice.injection import INJECTIONS

__all__ = ["SweepConfig", "run"]


def run(config: SweepConfig) -> list[SweepRecord]:
    """Run the sweep, write the records, the report and the config, and return the records."""
    train = read_texts("train_texts", config.train_texts)
    held_out = read_texts("eval_texts", config.eval_texts)
    A, B = load_models(config) if config.splice is None else splice_models(config)
    records = layer_sweep(
        A,
        B,
        train,
        held_out,
        None if config.source_layers is None else list(config.source_layers),
        pairs=None if config.pairs is None else [parse_pair(p) for p in config.pairs],
        match=config.match,
        kind=config.kind,
        alignment=list(config.alignment),
        injection=config.injection,
        positions=config.positions,
        save_dir=Path(config.out) / "adapters",
        baseline=config.baseline,
        batch_size=config.batch_size,
        progress=config.progress,
        **config.fit_options(),
    )
    out = Path(config.out)
    rows = [r.to_dict() for r in records]
    write_json(out / "records.json", rows)
    note = f"fitted on {len(train)} texts ({config.train_texts}), scored on {len(held_out)} ({config.eval_texts})"
    note += f". Injection {config.injection!r} answers: {INJECTIONS[config.injection].answers}"
    sections = [
        Section("Loss recovered by layer", sweep_figure(records), note=note),
        Section("Records", [r.to_row() for r in records]),
    ]
    write_report(out / "report.html", sections, title=f"Layer sweep: {A.name} → {B.name} ({config.kind})")
    save_run_config(config, out / "config.yaml", A, B)
    print(f"wrote {out / 'records.json'} and {out / 'report.html'}")
    return records

