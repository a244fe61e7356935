"""Plotly figures of layer-by-layer similarity: the heatmap and the best-matching-layer curve.

    >>> from analyses.figures.similarity import similarity_heatmap, best_match_curve
    >>> rec = layer_similarity(A, B, texts, null_permutations=200)
    >>> similarity_heatmap(rec).show()           # cells not above chance greyed out
    >>> best_match_curve(rec).write_html("best.html")
    >>> similarity_heatmap(cka_matrix(xs, ys))    # a bare [layer_x, layer_y] tensor works too

Both take a `LayerSimilarity` record (or anything with `.matrix` and optionally `.null`, `.measure`,
`.pairing`, `.n`, `.source`, `.target`), a `NullResult`, or a matrix, and return a `go.Figure`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

_GREY = [[0.0, "#d9d9d9"], [1.0, "#d9d9d9"]]


@dataclass(frozen=True)
class _View:
    """What a figure needs from any input: values, optional chance level, and labels."""

    values: np.ndarray
    above: np.ndarray | None  # bool per cell, None without a null
    null_mean: np.ndarray | None
    p_value: np.ndarray | None
    measure: str
    source: str
    target: str
    subtitle: str


def _view(record, null, alpha: float, source: str | None, target: str | None) -> _View:
    matrix = getattr(record, "matrix", getattr(record, "observed", record))
    values = _numpy(matrix)
    if values.ndim != 2:
        raise ValueError(f"record: expected a [layer_x, layer_y] matrix, got shape {values.shape}")
    null = null if null is not None else getattr(record, "null", None)
    if null is None and hasattr(record, "p_value") and not hasattr(record, "matrix"):
        null = record  # a NullResult on its own
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha!r}; expected a significance level in (0, 1)")
    p = None if null is None else _numpy(null.p_value)
    if p is not None and p.shape != values.shape:
        raise ValueError(f"null: p-values of shape {p.shape} do not match the matrix's {values.shape}")
    parts = [f"{k} = {getattr(record, k)}" for k in ("pairing", "n") if getattr(record, k, None) is not None]
    if null is not None:
        parts.append(f"grey: not above chance (permutation p > {alpha:g}, {null.n_permutations} shuffles)")
    return _View(
        values=values,
        above=None if p is None else p <= alpha,
        null_mean=None if null is None else _numpy(null.null_mean),
        p_value=p,
        measure=getattr(record, "measure", None) or getattr(null, "measure", None) or "similarity",
        source=source or getattr(record, "source", None) or "A",
        target=target or getattr(record, "target", None) or "B",
        subtitle=", ".join(parts),
    )


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def similarity_heatmap(
    record,
    *,
    null=None,
    alpha: float = 0.05,
    mask_chance: bool = True,
    source: str | None = None,
    target: str | None = None,
    title: str | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """Heatmap of A layers (rows, y) against B layers (columns, x) with hover values.

    With a null (on the record or passed), cells whose permutation p-value exceeds `alpha` are drawn
    grey when `mask_chance`; their hover still shows the value, the null mean and p.
    """
    v = _view(record, null, alpha, source, target)
    rows, cols = v.values.shape
    custom = np.stack([_or_nan(v.null_mean, v.values), _or_nan(v.p_value, v.values)], axis=-1)
    hover = (
        f"{v.source} layer %{{y}}<br>{v.target} layer %{{x}}<br>{v.measure} %{{z:.4f}}"
        + ("<br>null mean %{customdata[0]:.4f}, p = %{customdata[1]:.3g}" if v.p_value is not None else "")
        + "<extra></extra>"
    )
    shown = v.values if v.above is None or not mask_chance else np.where(v.above, v.values, np.nan)
    top = zmax if zmax is not None else max(1.0, float(np.nanmax(v.values)))
    fig = go.Figure()
    if v.above is not None and mask_chance:
        fig.add_trace(
            go.Heatmap(
                z=np.where(v.above, np.nan, v.values),
                x=list(range(cols)),
                y=list(range(rows)),
                colorscale=_GREY,
                showscale=False,
                customdata=custom,
                hovertemplate=hover,
                name="not above chance",
            )
        )
    fig.add_trace(
        go.Heatmap(
            z=shown,
            x=list(range(cols)),
            y=list(range(rows)),
            colorscale="Viridis",
            zmin=0,
            zmax=top,
            customdata=custom,
            hovertemplate=hover,
            colorbar={"title": v.measure},
            name=v.measure,
        )
    )
    fig.update_layout(
        title=_title(title or f"{v.measure}: {v.source} vs {v.target} by layer", v.subtitle),
        xaxis={"title": f"{v.target} layer", "dtick": _tick(cols), "constrain": "domain"},
        yaxis={"title": f"{v.source} layer", "dtick": _tick(rows), "scaleanchor": "x"},
        template="plotly_white",
    )
    return fig


def best_match_curve(
    record,
    *,
    null=None,
    alpha: float = 0.05,
    source: str | None = None,
    target: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """For each A layer, the B layer it is most similar to (argmax of its row), with the value on hover.

    The dashed line is equal relative depth (layer_B = layer_A x L_B / L_A). With a null, A layers whose
    best match is not above chance are drawn as hollow markers.
    """
    v = _view(record, null, alpha, source, target)
    rows, cols = v.values.shape
    best = np.nanargmax(v.values, axis=1)
    score = v.values[np.arange(rows), best]
    above = np.ones(rows, bool) if v.above is None else v.above[np.arange(rows), best]
    hover = (
        f"{v.source} layer %{{x}} → {v.target} layer %{{y}}<br>{v.measure} %{{customdata:.4f}}<extra></extra>"
    )
    fig = go.Figure()
    depth = np.arange(rows) * (cols - 1) / max(rows - 1, 1)
    fig.add_trace(
        go.Scatter(
            x=list(range(rows)),
            y=depth,
            mode="lines",
            name="equal relative depth",
            line={"dash": "dash", "color": "grey"},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(range(rows)),
            y=best,
            mode="lines+markers",
            customdata=score,
            name=f"best {v.target} layer",
            hovertemplate=hover,
            marker={
                "size": 9,
                "color": score,
                "colorscale": "Viridis",
                "cmin": 0,
                "cmax": max(1.0, float(np.nanmax(score))),
                "showscale": True,
                "colorbar": {"title": v.measure},
                "symbol": np.where(above, "circle", "circle-open").tolist(),
            },
        )
    )
    fig.update_layout(
        title=_title(title or f"Best-matching {v.target} layer for each {v.source} layer", v.subtitle),
        xaxis={"title": f"{v.source} layer", "dtick": _tick(rows), "range": [-0.5, rows - 0.5]},
        yaxis={"title": f"{v.target} layer", "dtick": _tick(cols), "range": [-0.5, cols - 0.5]},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _or_nan(values: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.full_like(like, np.nan) if values is None else values


def _tick(count: int) -> int:
    return max(1, count // 12)  # at most ~12 labelled layers per axis


def _title(text: str, subtitle: str) -> dict:
    return {"text": text + (f"<br><sup>{subtitle}</sup>" if subtitle else "")}
