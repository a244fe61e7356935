"""`stitch communicate`: activation communication from A to B over a task file, a (k, j) sweep with controls.

    $ stitch communicate --source-model A --target-model B --tasks math --ks 4 8 --js 4 8 --out runs/comm
    $ stitch communicate ... --adapter closed_form --fit-texts paired.txt        # widths differ: one fit per (k, j)
    $ stitch communicate ... --adapter trained --fit-texts paired.txt --kind projection --train-steps 200
    $ stitch communicate --config comm.yaml          # keys = option names
    >>> run(CommunicateConfig(source_model="a/", target_model="b/", tasks="qa", ks=(2,), js=(2,), out="runs/c"))

Writes, in `--out`: records.jsonl (one per example, condition and (k, j)), summary.json (mean and 95%
bootstrap interval per condition, pair and task), run.json and report.html (heatmap, table, sample
exchanges as escaped text; `stitch report OUT` rebuilds it), config.yaml (replayable), and with a learned
`--adapter` the adapters in adapters/ (`k{k}_j{j}.safetensors`, or a training run directory each). Every
option is checked before a model loads (the task file too: a malformed line names the file and the line).
Conditions and metrics: `analyses.communication`, `analyses.evaluation`; adapters: `stitch.cli.communicate_config`.
"""

from __future__ import annotations

from pathlib import Path

import stitch
from analyses.communication import DEFINITIONS, communication_sweep, pair_adapters, summary_rows
from analyses.evaluation import load_tasks
from analyses.report import Header, Section, model_facts
from analyses.run_report import RUN_FILE, communication_sections, write_run_report
from stitch.cli.common import load_models, read_texts, save_run_config, write_json, write_jsonl
from stitch.cli.communicate_config import CommunicateConfig

__all__ = ["CommunicateConfig", "adapters_for", "report_sections", "run"]


def run(config: CommunicateConfig) -> list[dict]:
    """Run the sweep, write the run directory, and return the records."""
    examples = load_tasks(config.tasks)[: config.limit]  # a bad file fails before any model loads
    A, B = load_models(config)
    out = Path(config.out)
    records = communication_sweep(
        A, B, examples, list(config.ks), list(config.js), adapter=adapters_for(config, A, B, out / "adapters"),
        combine=config.combine, positions=list(config.positions),
        source_positions=list(config.source_positions), inject=config.inject, conditions=list(config.conditions),
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, progress=config.progress,
        seed=config.seed)
    write_jsonl(out / "records.jsonl", records)
    write_json(out / "summary.json", summary_rows(records, config.n_boot, config.seed))
    save_run_config(config, out / "config.yaml", A, B)
    header = Header.collect(config=config.to_dict(), models=[model_facts(A), model_facts(B)])
    write_json(out / RUN_FILE, {
        "title": f"Communication: {A.name} → {B.name}", "header": header.to_dict(),
        "sections": [{"kind": "communication", "title": "Activation communication", "file": "records.jsonl",
                      "summary": "summary.json", "note": f"combine={config.combine}, adapter={config.adapter}, "
                      f"positions={list(config.positions)}, inject={config.inject}"}],
        "definitions": DEFINITIONS,
    })
    write_run_report(out)
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'} and {out / 'report.html'}")
    return records


def adapters_for(config: CommunicateConfig, A, B, save_dir: Path):
    """What `communication_sweep` takes as `adapter`: None (identity), one saved adapter for every pair, or
    {(k, j): adapter} learned on `--fit-texts` (saved under `save_dir`)."""
    method = config.method()
    if method == "identity":
        return None
    if method == "saved":
        return stitch.load_adapter(config.adapter)  # on the CPU: `stitch.communicate` places it at B's layer j
    texts = read_texts("fit_texts", config.fit_texts)
    pairs = [(k, j) for k in config.ks for j in config.js]
    given = dict(steps=config.train_steps, lr=config.lr)  # unset: pair_adapters' own defaults
    options = dict(ridge=config.ridge) if method == "closed_form" else dict(
        seed=config.seed, **{k: v for k, v in given.items() if v is not None})
    return pair_adapters(A, B, texts, pairs, method, config.kind, batch_size=config.batch_size,
                         save_dir=save_dir, progress=config.progress, **options)


def report_sections(records: list[dict], rows: list[dict], n_samples: int = 3) -> list[Section]:
    """Heatmap, the summary table with intervals, and sample exchanges (escaped text): the report's sections
    of a communication run (`analyses.run_report.communication_sections`), for reports that embed one."""
    return communication_sections(records, rows, samples=n_samples)
