"""Plotly figure of a layer sweep: loss recovered and cross-entropies by source layer.

    >>> from analyses.sweep import layer_sweep
    >>> from analyses.figures.sweep import sweep_figure
    >>> fig = sweep_figure(layer_sweep(A, B, train, held_out, kind="affine"))
    >>> fig.write_html("sweep.html")

Top panel: loss recovered (1 = B lost nothing, 0 = no better than the mean state) for the residual
splice and the embedding-injection baseline. Bottom panel: held-out CE of both, with B's native CE and
the no-information CE of the residual splice for reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.sweep import SweepRecord

_STYLE = {"residual": ("residual splice", "#1f77b4"), "inputs_embeds": ("embedding injection", "#d62728")}


def sweep_figure(records: Sequence[SweepRecord | dict], title: str | None = None) -> go.Figure:
    """Two panels sharing the source-layer axis; accepts records or their `to_dict()` dicts."""
    rows = [r if isinstance(r, SweepRecord) else SweepRecord.from_dict(r) for r in records]
    if not rows:
        raise ValueError("records: expected at least one SweepRecord, got none")
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("loss recovered", "held-out cross-entropy (nats/token)"),
    )
    for injection, (label, color) in _STYLE.items():
        group = sorted((r for r in rows if r.injection == injection), key=lambda r: r.source_layer)
        if group:
            _add_group(fig, group, label, color)
    residual = sorted((r for r in rows if r.injection == "residual"), key=lambda r: r.source_layer) or rows
    layers = [r.source_layer for r in residual]
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[r.ce_native for r in residual],
            name="B native",
            mode="lines",
            line={"color": "black", "dash": "dash"},
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[r.ce_no_information for r in residual],
            name="no information",
            mode="lines",
            line={"color": "grey", "dash": "dot"},
        ),
        row=2,
        col=1,
    )
    for level in (0.0, 1.0):
        fig.add_hline(y=level, line={"color": "lightgrey", "width": 1}, row=1, col=1)
    fig.update_xaxes(title_text="source layer N (A)", row=2, col=1)
    fig.update_layout(
        title=title or f"layer sweep ({rows[0].kind} adapter)", hovermode="x unified", template="plotly_white"
    )
    return fig


def _add_group(fig: go.Figure, group: list[SweepRecord], label: str, color: str) -> None:
    layers = [r.source_layer for r in group]
    hover = [
        f"N={r.source_layer} → M={r.target_layer} ({r.injection})<br>{r.n_train_pairs} training pairs, "
        f"{r.n_eval_tokens} held-out tokens"
        for r in group
    ]
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[r.loss_recovered for r in group],
            name=label,
            mode="lines+markers",
            line={"color": color},
            text=hover,
            legendgroup=label,
            hovertemplate="%{text}<br>loss recovered %{y:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=[r.ce_spliced for r in group],
            name=f"{label} CE",
            mode="lines+markers",
            line={"color": color},
            text=hover,
            legendgroup=label,
            showlegend=False,
            hovertemplate="%{text}<br>CE %{y:.4f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
