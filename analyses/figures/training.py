"""Training curves from a run's records (`OUT/metrics.jsonl`), and the report sections of a training run.

    >>> from analyses.figures.training import training_curves, training_sections, read_history
    >>> training_curves(read_history("runs/l16")).show()
    >>> write_report("runs/l16/report.html", training_sections("runs/l16"), title="training l16")

Top panel: the training loss of every objective (and layer pair) per step. Bottom panel: held-out CE under
the splice per layer pair beside B's native and the context-free reference, with the best step marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.report import Section

_SKIP = {"split", "step", "lr", "tokens", "grad_norm", "tokens_per_s", "error", "nonfinite"}


def read_history(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def training_curves(history: list[dict], closed_form: float | None = None, title: str | None = None) -> go.Figure:
    """Training losses (top) and held-out cross-entropies (bottom) against the step.

    `closed_form`: the closed-form fit's loss recovered, named in the title for comparison.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("training loss per objective", "held-out CE (nats per label)"))  # fmt: skip
    train = [r for r in history if r.get("split") == "train"]
    keys = sorted({k for r in train for k, v in r.items() if k not in _SKIP and isinstance(v, int | float)})
    for key in keys:
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        fig.add_trace(
            go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=key, mode="lines"), 1, 1
        )
    evals = [r for r in history if r.get("split") == "eval"]
    for pair in sorted({r.get("pair", "") for r in evals}):
        mine = [r for r in evals if r.get("pair", "") == pair]
        suffix = f" {pair}" if pair else ""
        for field, dash in (("ce_spliced", None), ("ce_native", "dot"), ("ce_context_free", "dash")):
            fig.add_trace(go.Scatter(x=[r["step"] for r in mine], y=[r.get(field) for r in mine], mode="lines+markers",
                                     name=f"{field}{suffix}", line={"dash": dash}), 2, 1)  # fmt: skip
    stop = next((r for r in history if r.get("split") == "early_stop"), None)
    best = stop["best_step"] if stop else _best_step(evals)
    if best is not None:
        fig.add_vline(x=best, line_dash="dot", annotation_text=f"best step {best}", row=2, col=1)
    fig.update_xaxes(title_text="optimizer step", row=2, col=1)
    named = title or "Adapter training"
    if closed_form is not None and math.isfinite(closed_form):
        named += f" (closed-form fit: loss recovered {closed_form:.3f})"
    fig.update_layout(title=named, height=640, legend={"orientation": "v"})
    return fig


def _best_step(evals: list[dict]) -> int | None:
    scored = [r for r in evals if isinstance(r.get("ce_spliced"), float)]
    return min(scored, key=lambda r: r["ce_spliced"])["step"] if scored else None


def training_sections(run_dir) -> list[Section]:
    """The sections `stitch report RUN_DIR` shows for a training run: the curves and the eval records."""
    history = read_history(run_dir)
    table = [
        {k: v for k, v in r.items() if not isinstance(v, dict)} for r in history if r.get("split") == "eval"
    ]
    sections = [Section("Training curves", training_curves(history), note=f"run directory: {run_dir}")]
    if table:
        sections.append(Section("Held-out evaluations (headline class)", table))
    return sections
