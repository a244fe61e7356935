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
from dataclasses import dataclass
from pathlib import Path

import stitch
from analyses.communication import CONDITIONS, communication_sweep, summary_rows
from analyses.evaluation import load_tasks
from analyses.figures.communication import communication_heatmap
from analyses.generation import escape_text
from analyses.report import Section, write_report
from stitch.cli.common import ModelPairConfig, flag, load_models, option, save_config, write_json
from stitch.files import write_atomic
from stitch.splice.combine import COMBINES
from stitch.splice.communicate import INJECT


@dataclass(frozen=True, kw_only=True)
class CommunicateConfig(ModelPairConfig):
    tasks: str = option(help="task file (.jsonl, see analyses.evaluation) or a shipped task: qa, math, mc, similarity")
    ks: tuple[int, ...] = option(help="A layers k to read")
    js: tuple[int, ...] = option(help="B layers j to write at")
    out: str = option(help="output directory")
    adapter: str | None = option(None, help="adapter saved by `stitch fit`, used for every (k, j) (default: identity; "
                                 "needed when the widths differ)")
    combine: str = option("replace", choices=tuple(COMBINES), help="how A's state meets B's own")
    positions: tuple[int, ...] = option((-1,), help="B prompt token indices written (-1 = last)")
    source_positions: tuple[int, ...] = option((-1,), help="A prompt token indices read, one per position (or one)")
    inject: str = option("prompt", choices=INJECT, help="write on the prompt pass only, or also every generated token")
    conditions: tuple[str, ...] = option(CONDITIONS, help=f"conditions to run: {', '.join(CONDITIONS)}")
    max_new_tokens: int = option(16, help="tokens B generates per example")
    limit: int | None = option(None, help="use only the first N examples")
    batch_size: int = option(8, help="examples generated together")
    n_boot: int = option(1000, help="bootstrap resamples for the intervals")
    seed: int = option(0, help="seed of the random control and the bootstrap")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"{flag('conditions')}: got {bad}; valid: {list(CONDITIONS)}")
        for name in ("max_new_tokens", "batch_size", "n_boot"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag(name)}: expected an integer >= 1, got {value!r}")
        if not self.ks or not self.js:
            raise ValueError(f"{flag('ks')} / {flag('js')}: give at least one layer each")
        if len(self.source_positions) not in (1, len(self.positions)):
            raise ValueError(f"{flag('source_positions')}: {len(self.source_positions)} indices for "
                             f"{len(self.positions)} positions; give one, or one per position")


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
