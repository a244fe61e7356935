"""`stitch communicate`: activation communication from A to B over a task file, a (k, j) sweep with controls.

    $ stitch communicate --source-model A --target-model B --tasks math --ks 4 8 --js 4 8 --out runs/comm
    $ stitch communicate --config comm.yaml          # keys = option names
    >>> run(CommunicateConfig(source_model="a/", target_model="b/", tasks="qa", ks=(2,), js=(2,), out="runs/c"))

Writes, in `--out`: records.jsonl (one per example, condition and (k, j)), summary.json (mean and 95%
bootstrap interval per condition, pair and task), report.html (heatmap, table, sample exchanges as escaped
text) and config.json. Every option is checked before a model loads (the task file too: a malformed line
names the file and the line). Conditions and metrics: `analyses.communication`, `analyses.evaluation`.
"""

from __future__ import annotations

import json
from pathlib import Path

import stitch
from analyses.communication import communication_sweep, summary_rows
from analyses.evaluation import load_tasks
from analyses.figures.communication import communication_heatmap
from analyses.generation import escape_text
from analyses.report import Section, write_report
from stitch.cli.common import flag, load_models, save_config, write_json
from stitch.cli.configs import CommunicateConfig
from stitch.files import write_atomic


def run(config: CommunicateConfig) -> list[dict]:
    """Run the sweep, write the run directory, and return the records."""
    examples = load_tasks(config.tasks)[: config.limit]  # a bad file fails before any model loads
    if config.adapter is not None and not Path(config.adapter).exists():
        raise FileNotFoundError(f"{flag('adapter')}: no adapter at {config.adapter!r}")
    A, B = load_models(config)
    adapter = None if config.adapter is None else stitch.load_adapter(config.adapter).to(A.device)
    for name, layers, model in (("ks", config.ks, A), ("js", config.js, B)):
        bad = [x for x in layers if not 0 <= x <= model.n_layers]
        if bad:
            raise ValueError(f"{flag(name)}: {bad} out of range; valid: 0..{model.n_layers}")
    records = communication_sweep(
        A, B, examples, list(config.ks), list(config.js), adapter=None if adapter is None else lambda k, j: adapter,
        combine=config.combine, positions=list(config.positions),
        source_positions=list(config.source_positions), inject=config.inject, conditions=list(config.conditions),
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, progress=config.progress,
        seed=config.seed)
    out = Path(config.out)
    write_atomic(out / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rows = summary_rows(records, config.n_boot, config.seed)
    write_json(out / "summary.json", rows)
    write_report(out / "report.html", report_sections(records, rows), title=f"Communication: {A.name} → {B.name}")
    save_config(config, out / "config.json")
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'} and {out / 'report.html'}")
    return records


def report_sections(records: list[dict], rows: list[dict], n_samples: int = 6) -> list[Section]:
    """Heatmap, the summary table with intervals, and sample exchanges (escaped text)."""
    sections = []
    if any(r["condition"] == "activation" for r in rows):
        sections.append(Section("Activation communication by (k, j)", communication_heatmap(rows)))
    table = [{**r, "mean": round(r["mean"], 4), "low": round(r["low"], 4), "high": round(r["high"], 4)} for r in rows]
    sections.append(Section("Scores with 95% bootstrap intervals", table,
                            note="Controls (k = j = none) do not depend on the layers."))
    samples = [{"condition": r["condition"], "k": r["k"], "j": r["j"], "id": r["id"],
                "prediction": escape_text(r["prediction"])} for r in records[: n_samples * 4]]
    sections.append(Section("Sample exchanges", samples))
    return sections
