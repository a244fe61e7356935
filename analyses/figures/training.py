"""Training curves from a run's `metrics.jsonl` history: the training loss and the held-out scores.

    >>> history = [json.loads(line) for line in open("runs/l2/metrics.jsonl")]
    >>> training_curves(history, closed_form=0.71).show()       # a dashed line at the closed-form fit's score

Eval records are drawn at their step: loss recovered (shared positions) above, the spliced CE beside B's
native and context-free CE below. Records whose value is missing or NaN are left out, not drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def training_curves(history: Sequence[dict], closed_form: float | None = None, title: str | None = None) -> go.Figure:
    """Two panels sharing the step axis; `closed_form`: the closed-form fit's loss recovered, as a line."""
    train = [r for r in history if r.get("split") == "train" and _real(r.get("loss"))]
    evals = [r for r in history if r.get("split") == "eval"]
    if not train and not evals:
        raise ValueError("history: no train or eval record with a finite value")
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
        subplot_titles=("held-out loss recovered (shared positions)", "cross-entropy (nats/label)"),
    )
    _line(fig, evals, "loss_recovered", "loss recovered (held-out)", 1, "#1f77b4")
    if closed_form is not None and _real(closed_form):
        fig.add_hline(y=closed_form, line={"dash": "dash", "color": "#d62728"}, row=1, col=1,
                      annotation_text=f"closed-form fit {closed_form:.3f}", annotation_position="bottom right")
    _line(fig, train, "loss", "training loss (all labels)", 2, "#7f7f7f")
    _line(fig, evals, "ce_spliced", "CE spliced (held-out)", 2, "#1f77b4")
    _line(fig, evals, "ce_native", "CE native", 2, "#2ca02c", dash="dot")
    _line(fig, evals, "ce_context_free", "CE context-free", 2, "#ff7f0e", dash="dot")
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title=title or "Adapter training", template="plotly_white", height=560, hovermode="x unified")
    return fig


def _line(fig: go.Figure, records: list[dict], key: str, name: str, row: int, colour: str, dash: str = "solid") -> None:
    points = [(r["step"], r[key]) for r in records if _real(r.get(key))]
    if points:
        x, y = zip(*points, strict=True)
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines+markers", line={"color": colour, "dash": dash}),
                      row=row, col=1)


def _real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
