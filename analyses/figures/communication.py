"""The (k, j) heatmap of activation communication: B's task score when it reads A's layer k at its layer j.

    >>> fig = communication_heatmap(summary_rows(records))
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from analyses.communication import heatmap_grid


def communication_heatmap(rows: Sequence[dict], condition: str = "activation", task: str | None = None) -> go.Figure:
    """Mean primary metric per (A layer k, B layer j); references ("none", "a_context", ...) in the title."""
    ks, js, values = heatmap_grid(rows, condition, task)
    refs = ", ".join(f"{r['condition']} {r['mean']:.3f}" for r in rows if r["k"] is None
                     and (task is None or r["task"] == task))
    fig = go.Figure(go.Heatmap(z=values, x=[str(j) for j in js], y=[str(k) for k in ks], colorscale="Viridis",
                               colorbar={"title": "score"}, hovertemplate="k=%{y} j=%{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"{condition}: score by (k, j)" + (f" — {refs}" if refs else ""),
                      xaxis_title="B layer j", yaxis_title="A layer k", template="plotly_white")
    return fig
