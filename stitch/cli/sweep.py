"""`stitch sweep`: fit an adapter at every splice layer and score it on held-out text.

    $ stitch sweep --source-model meta-llama/Llama-3.1-8B --target-model meta-llama/Llama-3.2-3B \\
          --train-texts train.txt --eval-texts eval.txt --source-layers 0 8 16 24 32 --out runs/sweep
    $ stitch sweep ... --injection hybrid                       # B reads its own tokens; A only at shared positions
    $ stitch sweep ... --positions shared --kind token_conditioned --window 2 --ridge 0.01
    >>> run(SweepConfig(source_model="a/", target_model="b/", train_texts="t.txt", eval_texts="e.txt", out="s/"))

Writes `OUT/records.json` (one `analyses.sweep.SweepRecord.to_dict()` per splice, scores per position class),
`OUT/adapters/*.safetensors` (the fitted adapters), `OUT/report.html` (the sweep figure and the records as a
table) and `OUT/config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analyses.figures import sweep_figure
from analyses.report import Section, write_report
from analyses.sweep import SweepRecord, layer_sweep
from stitch.adapters import CLOSED_FORM
from stitch.cli.common import (
    ModelPairConfig,
    load_models,
    option,
    read_texts,
    save_config,
    write_json,
)
from stitch.splice.injection import INJECTIONS
from stitch.splice.positions import SELECTIONS, Positions


@dataclass(frozen=True, kw_only=True)
class SweepConfig(ModelPairConfig):
    train_texts: str = option(help="text file the adapters are fitted on (one per line, or .jsonl)")
    eval_texts: str = option(help="held-out text file the splices are scored on (one per line, or .jsonl)")
    out: str = option(help="output directory")
    source_layers: tuple[int, ...] | None = option(None, help="A layers to splice from (default: all)")
    match: str | None = option(
        None,
        choices=("same", "relative"),
        help="B layer per A layer: same index or same relative depth (default: same when depths agree)",
    )
    pairs: tuple[str, ...] | None = option(
        None, help="explicit splices N:M (e.g. 8:8 16:14); instead of --source-layers/--match"
    )
    alignment: tuple[str, ...] = option(("target",), help="grids to score on: target, source, or both")
    injection: str = option(
        "residual", choices=tuple(INJECTIONS),
        help="how A's states enter B (hybrid: B reads its own tokens below M, A's states at shared positions)",
    )
    positions: str | None = option(
        None,
        help=f"where A's states are written: {', '.join(SELECTIONS)} or token indices like 0,-1 (default: "
        "the injection's own; B keeps its own states elsewhere and runs its lower blocks for them)",
    )
    kind: str = option("affine", choices=CLOSED_FORM, help="closed-form adapter kind")
    ridge: float | None = option(
        None,
        help="relative ridge: a fraction of the fitted features' mean variance per dimension (linear, affine, "
        "token_conditioned; default 0)",
    )
    window: int | None = option(None, help="token_conditioned only: B tokens since the boundary it reads (default 2)")
    baseline: bool = option(True, help="also score the embedding-injection baseline")
    batch_size: int = option(8, help="texts per forward")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        if self.positions is not None:
            Positions.parse(self.positions)  # a bad selection fails here, before any model loads

    def fit_options(self) -> dict:
        options = {"ridge": self.ridge, "window": self.window}
        return {k: v for k, v in options.items() if v is not None}


def run(config: SweepConfig) -> list[SweepRecord]:
    """Run the sweep, write the records, the report and the config, and return the records."""
    train = read_texts("train_texts", config.train_texts)
    held_out = read_texts("eval_texts", config.eval_texts)
    A, B = load_models(config)
    records = layer_sweep(
        A,
        B,
        train,
        held_out,
        None if config.source_layers is None else list(config.source_layers),
        pairs=None if config.pairs is None else [_pair(p) for p in config.pairs],
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
    save_config(config, out / "config.json")
    print(f"wrote {out / 'records.json'} and {out / 'report.html'}")
    return records


def _pair(text: str) -> tuple[int, int]:
    """"8:14" → (8, 14); the error names the option."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--pairs: expected N:M with integer layers (e.g. 8:8), got {text!r}")
    return int(parts[0]), int(parts[1])
