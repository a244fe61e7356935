"""Plotly figure of a layer sweep: loss recovered and cross-entropies per position class, by source layer.

    >>> from analyses.sweep import layer_sweep
    >>> from analyses.figures.sweep import sweep_figure
    >>> fig = sweep_figure(layer_sweep(A, B, train, held_out, kind="affine"), source="Llama", target="Mistral")
    >>> fig.write_html("sweep.html")

Top panel: loss recovered at the headline class (shared positions; 1 = B's native CE, 0 = the context-free
reference) for every injection, position selection and grid (hybrid rows answer a different question: B
reads its own tokens below layer M and A's states only where it writes them). Undefined ratios (NaN: the reference is within tolerance of B's
native CE, or no label of the class) are not plotted: an ✕ on the zero line marks them, with the reason on
hover. Bottom panel: CE of the first splice group per position class (shared, lagging, none, all), with B's
native CE and the context-free and mean-ablation references on the headline class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.figures.layers import layer_axis
from analyses.sweep import SweepRecord

_COLORS = {
    ("residual", "target"): "#1f77b4",
    ("residual", "source"): "#2ca02c",
    ("inputs_embeds", "target"): "#d62728",
    ("inputs_embeds", "source"): "#ff7f0e",
    ("hybrid", "target"): "#8c564b",
}
_NAMES = {
    "residual": "residual splice",
    "inputs_embeds": "embedding injection",
    "hybrid": "hybrid (B reads its own tokens; a different question)",
}
_CLASS_DASH = {"shared": "solid", "lagging": "dash", "none": "dot", "all": "dashdot"}


def sweep_figure(
    records: Sequence[SweepRecord | dict],
    title: str | None = None,
    *,
    source: str | None = None,
    target: str | None = None,
) -> go.Figure:
    """Two panels sharing the source-layer axis; accepts records or their `to_dict()` dicts."""
    rows = sorted((_as_record(r) for r in records), key=lambda r: r.source_layer)
    if not rows:
        raise ValueError("records: expected at least one SweepRecord, got none")
    named = f": {source or 'A'} → {target or 'B'}" if source or target else ""
    source, target = source or "A", target or "B"
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
        subplot_titles=(
            f"loss recovered at {rows[0].headline} positions (1 = {target} native, 0 = context-free unigram)",
            "held-out cross-entropy (nats/label)",
        ),
    )
    groups = _groups(rows)
    for key, group in groups.items():
        _add_recovered(fig, key, group)
    first_key, first = next(iter(groups.items()))
    _add_classes(fig, first_key, first)
    _add_references(fig, first, target)
    for level in (0.0, 1.0):
        fig.add_hline(y=level, line={"color": "lightgrey", "width": 1}, layer="below", row=1, col=1)
    last = max(r.source_layer for r in rows) + 1
    fig.update_xaxes(**layer_axis(source, last, symbol="N"), row=2, col=1)
    fig.update_xaxes(tick0=0, dtick=layer_axis(source, last)["dtick"], row=1, col=1)
    fig.update_layout(
        title=title or f"Layer sweep, {rows[0].kind} adapter{named}",
        hovermode="x unified", template="plotly_white", height=660,
    )
    return fig


def _as_record(record) -> SweepRecord:
    return record if isinstance(record, SweepRecord) else SweepRecord.from_dict(record)


def _groups(rows: list[SweepRecord]) -> dict[tuple[str, str, str], list[SweepRecord]]:
    groups: dict[tuple[str, str, str], list[SweepRecord]] = {}
    for r in rows:
        groups.setdefault((r.injection, r.positions, r.alignment), []).append(r)
    return groups


def _label(key: tuple[str, str, str]) -> str:
    injection, positions, grid = key
    where = "" if positions == "all" or (injection == "hybrid" and positions == "shared") else f" at {positions}"
    return f"{_NAMES.get(injection, injection)}{where}, {grid} grid"


def _color(key: tuple[str, str, str]) -> str:
    return _COLORS.get((key[0], key[2]), "#7f7f7f")


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _add_recovered(fig: go.Figure, key, group: list[SweepRecord]) -> None:
    label, color = _label(key), _color(key)
    hover = [
        f"N={r.source_layer} → M={r.target_layer}, {r.n_train_pairs} training pairs, "
        f"{r.n_tokens} {r.headline} labels of {r.n_eval_tokens}"
        for r in group
    ]
    fig.add_trace(
        go.Scatter(
            x=[r.source_layer for r in group], y=[_finite(r.loss_recovered) for r in group], text=hover,
            name=label, legendgroup=label, mode="lines+markers", line={"color": color},
            hovertemplate=f"{label} %{{y:.3f}}<br>%{{text}}<extra></extra>",
        ),
        row=1, col=1,
    )
    undefined = [r for r in group if _finite(r.loss_recovered) is None]
    if undefined:
        fig.add_trace(
            go.Scatter(
                x=[r.source_layer for r in undefined], y=[0.0] * len(undefined),
                text=[r.note or "undefined" for r in undefined], name=f"{label}: undefined",
                legendgroup=label, mode="markers", marker={"symbol": "x-open", "size": 11, "color": color},
                hovertemplate="NaN: %{text}<extra></extra>",
            ),
            row=1, col=1,
        )


def _add_classes(fig: go.Figure, key, group: list[SweepRecord]) -> None:
    label, color = _label(key), _color(key)
    for name, dash in _CLASS_DASH.items():
        ys = [_finite(r.classes[name].ce_spliced) for r in group]
        if all(y is None for y in ys):
            continue
        fig.add_trace(
            go.Scatter(
                x=[r.source_layer for r in group], y=ys, name=f"{label}: {name}", mode="lines+markers",
                line={"color": color, "dash": dash},
                hovertemplate=f"{label}, {name} positions: CE %{{y:.4f}}<extra></extra>",
            ),
            row=2, col=1,
        )


def _add_references(fig: go.Figure, group: list[SweepRecord], target: str) -> None:
    headline = group[0].headline
    lines = (
        (f"{target} native ({headline})", "ce_native", {"color": "black", "dash": "dash"}),
        (f"context-free unigram ({headline})", "ce_context_free", {"color": "grey", "dash": "dot"}),
        (f"mean ablation ({headline}, diagnostic)", "ce_mean_ablation", {"color": "#9467bd", "dash": "dot", "width": 1}),
    )
    for name, attr, line in lines:
        fig.add_trace(
            go.Scatter(
                x=[r.source_layer for r in group], y=[_finite(getattr(r, attr)) for r in group], name=name,
                mode="lines", line=line, hovertemplate=f"{name} %{{y:.4f}}<extra></extra>",
            ),
            row=2, col=1,
        )
