"""The report of a run directory, rebuilt from its records alone (what `stitch report RUN_DIR` runs).

    >>> write_run_report("stitch-demo")                     # -> stitch-demo/report.html
    >>> write_run_report("runs/sweep", plotlyjs="beside")   # any directory a stitch command wrote

A directory with `run.json` (the demo writes one) lists its header, summary and sections; each section
names a `kind` in `SECTION_KINDS` and the file (relative to the directory) or data it is drawn from:

    {"title": ..., "header": Header.to_dict(), "summary": [{...}, ...],
     "sections": [{"kind": "sweep", "title": ..., "file": "sweep/records.json", "note": ...}, ...],
     "definitions": {"term": "meaning", ...}}       # optional: the report's definitions (default: the splice's)

A new kind of result (generations, ...) is one builder here plus a registry entry; `stitch communicate`
writes a `communication` section (`records.jsonl` + `summary.json`). A directory without `run.json` is read
by what it holds: `config.json` (the header's config), `records.jsonl` with `summary.json` (a communication
run), `records.json` (a layer sweep), `metrics.jsonl` (a training run), `summary.json` / `similarity.json`
(align / cka tables), in it or in its immediate subdirectories.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import plotly.io as pio

from analyses.communication import PER_LAYER
from analyses.figures.communication import communication_heatmap
from analyses.figures.sweep import sweep_figure
from analyses.figures.training import training_curves
from analyses.generation import escape_text
from analyses.report import Header, Section, write_report
from analyses.sweep import SweepRecord
from stitch.registry import Registry

RUN_FILE = "run.json"


def figure_section(directory: Path, spec: dict) -> list[Section]:
    """A plotly figure saved as JSON (`fig.write_json`)."""
    fig = pio.from_json((directory / spec["file"]).read_text(encoding="utf-8"), skip_invalid=True)
    return [Section(spec["title"], fig, note=spec.get("note", ""), flags=tuple(spec.get("flags", ())))]


def table_section(directory: Path, spec: dict) -> list[Section]:
    """Rows given inline (`data`) or in a JSON file (`file`); text cells are escaped by the report."""
    rows = spec["data"] if "data" in spec else json.loads((directory / spec["file"]).read_text(encoding="utf-8"))
    rows = rows if isinstance(rows, list) else [rows]
    return [Section(spec["title"], rows, note=spec.get("note", ""), flags=tuple(spec.get("flags", ())) + _nan_flags(rows))]


def sweep_section(directory: Path, spec: dict) -> list[Section]:
    """A layer sweep's records: the figure (NaN left out) and the per-class table (NaN flagged)."""
    records = [SweepRecord.from_dict(r) for r in json.loads((directory / spec["file"]).read_text(encoding="utf-8"))]
    undefined = [r for r in records if not _real(r.loss_recovered)]
    flags = tuple(
        f"{r.injection} {r.alignment} {r.source_layer}→{r.target_layer}: loss recovered undefined — {r.note or 'NaN'}"
        for r in undefined
    )
    names = spec.get("names", ["A", "B"])
    sections = [Section(spec["title"], sweep_figure(records, source=names[0], target=names[1]), note=spec.get("note", ""), flags=flags)]
    return sections + [Section(f"{spec['title']}: every position class", [r.to_row() for r in records])]


def training_section(directory: Path, spec: dict) -> list[Section]:
    """A training run's `metrics.jsonl` as curves, with the closed-form fit's score as a line."""
    lines = (directory / spec["file"]).read_text(encoding="utf-8").splitlines()
    history = [json.loads(line) for line in lines if line.strip()]
    closed = spec.get("closed_form")
    flags = tuple(f"step {r['step']}: loss recovered undefined" for r in history
                  if r.get("split") == "eval" and not _real(r.get("loss_recovered")))
    sections = [Section(spec["title"], training_curves(history, closed_form=closed), note=spec.get("note", ""), flags=flags)]
    return sections + _sample_sections(spec["title"], history)


def _sample_sections(title: str, history: list[dict]) -> list[Section]:
    """The generation samples of each evaluation (`samples` in the training config), one row per prompt."""
    rows = [
        {"step": r["step"], **({"pair": r["pair"]} if "pair" in r else {}), **sample}
        for r in history if r.get("split") == "samples" for sample in r.get("samples", [])
    ]  # fmt: skip
    note = "B's greedy continuations under the adapter of each evaluation step, on fixed held-out openings"
    return [Section(f"{title}: generation samples", rows, note=note)] if rows else []


def communication_section(directory: Path, spec: dict) -> list[Section]:
    """A `stitch communicate` run: `file` (records.jsonl) and `summary` (summary.json) as
    `communication_sections`."""
    lines = (directory / spec["file"]).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    rows = json.loads((directory / spec["summary"]).read_text(encoding="utf-8"))
    return communication_sections(records, rows, spec.get("title", "Activation communication"),
                                   note=spec.get("note", ""), samples=spec.get("samples", 3))


def communication_sections(records: list[dict], rows: list[dict], title: str = "Activation communication",
                           note: str = "", samples: int = 3) -> list[Section]:
    """The (k, j) heatmap per task, the summary (`analyses.communication.summary_rows`) with its bootstrap
    intervals, and sample exchanges of the first `samples` examples (every text control, and the activation
    and random conditions at the best pair), text escaped (newlines and control characters visible, HTML
    escaped by the report)."""
    sections = []
    for task in dict.fromkeys(r["task"] for r in rows if r["condition"] == "activation"):
        sections.append(Section(f"{title}: {task} by (k, j)", communication_heatmap(rows, task=task), note=note))
    table = [{k: v for k, v in r.items() if k not in ("k", "j")} | {"k": layer_label(r["k"]), "j": layer_label(r["j"])}
             for r in rows]
    sections.append(Section(f"{title}: scores with 95% bootstrap intervals", table, flags=_nan_flags(rows),
                            note="mean, low and high: the primary metric of each task and its percentile bootstrap "
                            "interval over examples; k = j = — for the text-only controls."))
    exchanges = _exchanges(records, rows, samples)
    if exchanges:
        sections.append(Section(f"{title}: sample exchanges", exchanges,
                                note="Text as generated, escaped: \\n is a newline, \\t a tab, \\uXXXX a control character."))
    return sections


def layer_label(value):
    """A communication record's layer k or j as a table shows it ("—": no layer, e.g. B alone)."""
    return "—" if value is None else value


def _exchanges(records: list[dict], rows: list[dict], n: int) -> list[dict]:
    """The first `n` examples' records under every text control and at the best activation pair."""
    best = {}
    for r in rows:
        if r["condition"] == "activation" and (r["task"] not in best or r["mean"] > best[r["task"]][0]):
            best[r["task"]] = (r["mean"], (r["k"], r["j"]))
    ids = list(dict.fromkeys(r["id"] for r in records))[:n]
    chosen = [r for r in records if r["id"] in ids and
              (r["condition"] not in PER_LAYER or (r["k"], r["j"]) == best.get(r["task"], (0, None))[1])]
    text = ("prompt_a", "a_said", "b_input", "prediction")
    return [{"id": escape_text(str(r["id"])), "condition": r["condition"], "k": layer_label(r["k"]), "j": layer_label(r["j"]),
             **{f: escape_text(r[f]) for f in text if isinstance(r.get(f), str)}} for r in chosen]


SECTION_KINDS: Registry[Callable[[Path, dict], list[Section]]] = Registry("section kind", {
    "figure": figure_section,
    "table": table_section,
    "sweep": sweep_section,
    "training": training_section,
    "communication": communication_section,
})


def run_sections(directory: str | Path) -> tuple[str, Header | None, list[dict], list[Section]]:
    """(title, header, summary rows, sections) of a run directory (see the module docstring)."""
    return _read_run(directory)[:4]


def _read_run(directory: str | Path) -> tuple:
    """`run_sections`' four, and the run's own definitions of its words (None: none given)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"run_dir: no directory at {str(directory)!r}")
    if (directory / RUN_FILE).is_file():
        return _from_run_file(directory)
    return (*_discovered(directory), None)


def write_run_report(directory: str | Path, out: str | Path | None = None, plotlyjs: str = "inline") -> Path:
    """Write the report of `directory` to `out` (default `directory/report.html`)."""
    title, header, summary, sections, definitions = _read_run(directory)
    path = Path(out) if out else Path(directory) / "report.html"
    return write_report(path, sections, title, header=header, summary=summary, plotlyjs=plotlyjs,
                        definitions=definitions)


def _from_run_file(directory: Path):
    run = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
    sections = []
    for i, spec in enumerate(run.get("sections", [])):
        kind = spec.get("kind")
        if kind not in SECTION_KINDS:
            raise ValueError(f"{RUN_FILE}: sections[{i}].kind: got {kind!r}; valid: {sorted(SECTION_KINDS)}")
        sections += SECTION_KINDS[kind](directory, spec)
    header = Header.from_dict(run["header"]) if run.get("header") else None
    return run.get("title", "stitch report"), header, run.get("summary", []), sections, run.get("definitions")


def _discovered(directory: Path):
    sections = []
    for folder in [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]:
        rel = folder.relative_to(directory).as_posix()
        where = "" if rel == "." else f" ({rel})"
        for name, kind, title in _KNOWN:
            if (folder / name).is_file() and not (name == "summary.json" and (folder / "records.jsonl").is_file()):
                spec = {"kind": kind, "title": title + where, "file": (folder / name).relative_to(directory).as_posix(),
                        "summary": (folder / "summary.json").relative_to(directory).as_posix()}
                sections += SECTION_KINDS[kind](directory, spec)
    if not sections:
        known = ", ".join(name for name, _, _ in _KNOWN)
        raise ValueError(f"run_dir: {directory} holds no {RUN_FILE} and none of {known}; nothing to report")
    config = directory / "config.json"
    header = Header(config=json.loads(config.read_text(encoding="utf-8"))) if config.is_file() else None
    return f"stitch report: {directory.name}", header, [], sections


_KNOWN = (
    ("records.jsonl", "communication", "Activation communication"),  # before summary.json: it reads that too
    ("records.json", "sweep", "Layer sweep"),
    ("metrics.jsonl", "training", "Training"),
    ("summary.json", "table", "Token alignment summary"),
    ("similarity.json", "table", "Layer similarity"),
)


def _nan_flags(rows: list[dict]) -> tuple[str, ...]:
    bad = sorted({k for r in rows if isinstance(r, dict) for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
    return (f"undefined (NaN or infinite) values in: {', '.join(bad)}",) if bad else ()


def _real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
