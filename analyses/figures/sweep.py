"""Plotly figure of a layer sweep: loss recovered and cross-entropies by source layer.

    >>> from analyses.sweep import layer_sweep
    >>> from analyses.figures.sweep import sweep_figure
    >>> fig = sweep_figure(layer_sweep(A, B, train, held_out, kind="affine"), source="Llama", target="Mistral")
    >>> fig.write_html("sweep.html")

Top panel: loss recovered (1 = B lost nothing, 0 = no better than the mean state) for the residual
splice and the embedding-injection baseline. Bottom panel: held-out CE of both, with B's native CE and
each injection's own no-information CE (dotted, in its colour) for reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.figures.layers import layer_axis
from analyses.sweep import SweepRecord

_STYLE = {"residual": ("residual splice", "#1f77b4"), "inputs_embeds": ("embedding injection", "#d62728")}


def sweep_figure(
    records: Sequence[SweepRecord | dict],
    title: str | None = None,
    *,
    source: str | None = None,
    target: str | None = None,
) -> go.Figure:
    """Two panels sharing the source-layer axis; accepts records or their `to_dict()` dicts.

    `source`/`target` name the models in the axis, legend and title (default: A and B, title unnamed). Each injection has its own no-information
    CE (the mean state spliced at its own target layer M), drawn dotted in its colour: loss recovered
    is measured between that line and B's native CE.
    """
    rows = sorted(
        (r if isinstance(r, SweepRecord) else SweepRecord.from_dict(r) for r in records),
        key=lambda r: r.source_layer,
    )
    if not rows:
        raise ValueError("records: expected at least one SweepRecord, got none")
    named = f": {source or 'A'} → {target or 'B'}" if source or target else ""
    source, target = source or "A", target or "B"
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=(
            f"loss recovered (1 = {target} native CE, 0 = no-information CE)",
            "held-out cross-entropy (nats/token)",
        ),
    )
    for injection, (label, color) in _STYLE.items():
        group = [r for r in rows if r.injection == injection]
        if group:
            _add_group(fig, group, label, color)
    residual = [r for r in rows if r.injection == "residual"] or rows
    fig.add_trace(
        go.Scatter(
            x=[r.source_layer for r in residual],
            y=[r.ce_native for r in residual],
            name=f"{target} native",
            mode="lines",
            line={"color": "black", "dash": "dash"},
            hovertemplate=f"{target} native CE %{{y:.4f}}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    for level in (0.0, 1.0):
        fig.add_hline(y=level, line={"color": "lightgrey", "width": 1}, layer="below", row=1, col=1)
    last = max(r.source_layer for r in rows) + 1
    fig.update_xaxes(**layer_axis(source, last, symbol="N"), row=2, col=1)
    fig.update_xaxes(tick0=0, dtick=layer_axis(source, last)["dtick"], row=1, col=1)
    fig.update_layout(
        title=title or f"Layer sweep, {rows[0].kind} adapter{named}",
        hovermode="x unified",
        template="plotly_white",
        height=620,
    )
    return fig


def _add_group(fig: go.Figure, group: list[SweepRecord], label: str, color: str) -> None:
    layers = [r.source_layer for r in group]
    hover = [
        f"N={r.source_layer} → M={r.target_layer}, {r.n_train_pairs} training pairs, "
        f"{r.n_eval_tokens} held-out tokens"
        for r in group
    ]
    common = {"x": layers, "text": hover, "legendgroup": label, "line": {"color": color}}
    fig.add_trace(
        go.Scatter(
            y=[r.loss_recovered for r in group],
            name=label,
            mode="lines+markers",
            hovertemplate=f"{label} %{{y:.3f}}<br>%{{text}}<extra></extra>",
            **common,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            y=[r.ce_spliced for r in group],
            name=f"{label} CE",
            mode="lines+markers",
            showlegend=False,
            hovertemplate=f"{label} CE %{{y:.4f}}<extra></extra>",
            **common,
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            y=[r.ce_no_information for r in group],
            name=f"no information, {label}",
            mode="lines",
            hovertemplate=f"no information, {label} CE %{{y:.4f}}<extra></extra>",
            **{**common, "line": {"color": color, "dash": "dot", "width": 1.5}},
        ),
        row=2,
        col=1,
    )
