"""Plotly figures of layer-by-layer similarity: the heatmap and the best-matching-layer curve.

    >>> from analyses.figures.similarity import similarity_heatmap, best_match_curve
    >>> rec = layer_similarity(A, B, texts, null_permutations=200)
    >>> similarity_heatmap(rec).show()           # cells not above chance greyed out
    >>> best_match_curve(rec).write_html("best.html")
    >>> similarity_heatmap(cka_matrix(xs, ys))    # a bare [layer_x, layer_y] tensor works too
    >>> rec = layer_similarity(A, B, texts, control="random-init")
    >>> similarity_heatmap(rec, relative_to="control")   # the excess over the random-init control

Both take a `LayerSimilarity` record (or anything with `.matrix` and optionally `.null`, `.measure`,
`.pairing`, `.n`, `.source`, `.target`, `.control`, `.control_kind`), a `NullResult`, or a matrix, and
return a `go.Figure`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from analyses.figures.layers import layer_axis
from analyses.similarity import LOWER_IS_SIMILAR

_GREY = [[0.0, "#d9d9d9"], [1.0, "#d9d9d9"]]
RELATIVE_TO = (None, "control")
_LABELS = {
    "linear_cka": "linear CKA",
    "debiased_cka": "debiased CKA",
    "rbf_cka": "RBF CKA",
    "svcca": "SVCCA",
    "mean_cosine": "mean cosine",
}


@dataclass(frozen=True)
class _View:
    """What a figure needs from any input: values, optional chance level, and labels."""

    values: np.ndarray
    above: np.ndarray | None  # bool per cell, None without a null
    null_mean: np.ndarray | None
    p_value: np.ndarray | None
    measure: str  # the measure's name as recorded, e.g. "linear_cka"
    source: str
    target: str
    subtitle: str  # pairing and sample count; each figure adds how it marks chance
    observed: np.ndarray  # the measure itself (equal to `values` unless drawn relative to a control)
    control: np.ndarray | None = None  # set when `values` is the excess over this control matrix
    control_kind: str = "control"

    @property
    def label(self) -> str:
        """The measure as a reader writes it ("linear CKA", not "linear_cka")."""
        return _LABELS.get(self.measure, self.measure)

    @property
    def value_label(self) -> str:
        """What the colours show: the measure, or its excess over the control."""
        return self.label if self.control is None else f"{self.label} − {self.control_kind}"

    def chance_note(self, marked: str, alpha: float, n_permutations: int | None) -> str:
        if n_permutations is None:
            return self.subtitle
        note = f"{marked}: not above chance (permutation p > {alpha:g}, {n_permutations} shuffles)"
        return ", ".join(p for p in (self.subtitle, note) if p)


def _view(
    record, null, alpha: float, source: str | None, target: str | None, relative_to: str | None = None
) -> tuple[_View, int | None]:
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
    measure = getattr(record, "measure", None) or getattr(null, "measure", None) or "similarity"
    control = _control(record, relative_to, values.shape)
    kind = f"{getattr(record, 'control_kind', None) or 'the'} control"
    if control is not None:
        seed = getattr(record, "control_seed", None)
        parts.append(f"excess = value − {kind}" + ("" if seed is None else f" (seed {seed})"))
    view = _View(
        values=values if control is None else _excess(values, control, measure),
        above=None if p is None else p <= alpha,
        null_mean=None if null is None else _numpy(null.null_mean),
        p_value=p,
        measure=measure,
        source=source or getattr(record, "source", None) or "A",
        target=target or getattr(record, "target", None) or "B",
        subtitle=", ".join(parts),
        observed=values,
        control=control,
        control_kind=kind,
    )
    return view, None if null is None else null.n_permutations


def _control(record, relative_to: str | None, shape: tuple) -> np.ndarray | None:
    if relative_to not in RELATIVE_TO:
        raise ValueError(f"relative_to: {relative_to!r} is not one of {list(RELATIVE_TO)}")
    if relative_to is None:
        return None
    control = getattr(record, "control", None)
    if control is None:
        raise ValueError(
            "relative_to: 'control' needs a record with a control matrix; compute it with "
            "layer_similarity(..., control='random-init')"
        )
    control = _numpy(control)
    if control.shape != shape:
        raise ValueError(f"record: control of shape {control.shape} does not match the matrix's {shape}")
    return control


def _excess(values: np.ndarray, control: np.ndarray, measure: str) -> np.ndarray:
    # positive = more similar than the control, for distance-like measures too
    return (control - values) if measure in LOWER_IS_SIMILAR else (values - control)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def _colour(v: _View, zmax: float | None = None) -> dict:
    """Colour scale and range: similarities on a fixed [0, 1] (wider only if values leave it), so two
    heatmaps compare by eye; distance-like measures (lower = more similar) reversed on their own range."""
    lo, hi = float(np.nanmin(v.values)), float(np.nanmax(v.values))
    if v.control is not None:  # an excess: diverging around 0 (no excess), symmetric so signs read alike
        top = zmax if zmax is not None else max(abs(lo), abs(hi), 1e-12)
        return {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -top, "zmax": top}
    if v.measure in LOWER_IS_SIMILAR:
        return {"colorscale": "Viridis_r", "zmin": lo, "zmax": zmax if zmax is not None else hi}
    return {"colorscale": "Viridis", "zmin": min(0.0, lo), "zmax": zmax if zmax is not None else max(1.0, hi)}


def _heatmap_size(rows: int, cols: int) -> dict:
    """Square cells, the colour bar right beside the map: 540 px along the longer side, cells 8-100 px."""
    cell = min(100.0, max(8.0, 540 / max(rows, cols)))
    margin = {"l": 90, "r": 130, "t": 110, "b": 70}
    width = max(620, round(cols * cell) + margin["l"] + margin["r"])  # room for the title line
    return {"width": width, "height": round(rows * cell) + margin["t"] + margin["b"], "margin": margin}


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
    relative_to: str | None = None,
) -> go.Figure:
    """Heatmap of A layers (rows, y) against B layers (columns, x) with hover values.

    With a null (on the record or passed), cells whose permutation p-value exceeds `alpha` are drawn
    grey when `mask_chance`; their hover still shows the value, the null mean and p. Similarities are
    coloured on a fixed [0, 1] scale (`zmax` overrides the top). `relative_to="control"` draws the
    excess over the record's control matrix (value − control, positive = more alike than untrained
    models; reversed for distance-like measures) on a diverging scale centred on 0, the value and the
    control on hover.
    """
    v, n_permutations = _view(record, null, alpha, source, target, relative_to)
    rows, cols = v.values.shape
    channels = [v.null_mean, v.p_value, v.observed, v.control]
    custom = np.stack([_or_nan(c, v.values) for c in channels], axis=-1)
    value = f"{v.label} %{{z:.4f}}"
    if v.control is not None:
        value = (
            f"excess %{{z:.4f}}<br>{v.label} %{{customdata[2]:.4f}}, {v.control_kind} %{{customdata[3]:.4f}}"
        )
    hover = (
        f"{v.source} layer %{{y}}<br>{v.target} layer %{{x}}<br>{value}"
        + ("<br>null mean %{customdata[0]:.4f}, p = %{customdata[1]:.3g}" if v.p_value is not None else "")
        + "<extra></extra>"
    )
    masked = v.above is not None and mask_chance
    cells = {"x": list(range(cols)), "y": list(range(rows)), "customdata": custom, "hovertemplate": hover}
    fig = go.Figure()
    if masked:  # hoverongaps off: each cell answers from the one trace that draws it
        z = np.where(v.above, np.nan, v.values)
        grey = {"colorscale": _GREY, "showscale": False, "hoverongaps": False, "name": "not above chance"}
        fig.add_trace(go.Heatmap(z=z, **cells, **grey))
    fig.add_trace(
        go.Heatmap(
            z=np.where(v.above, v.values, np.nan) if masked else v.values,
            **cells,
            **_colour(v, zmax),
            hoverongaps=False,
            colorbar={"title": {"text": v.value_label, "side": "right"}, "thickness": 16},
            name=v.value_label,
        )
    )
    subtitle = v.chance_note("grey", alpha, n_permutations if masked else None)
    over = "" if v.control is None else f" over {v.control_kind}"
    fig.update_layout(
        title=_title(title or f"{v.label}{over}: {v.source} vs {v.target} by layer", subtitle),
        xaxis={**layer_axis(v.target, cols), "constrain": "domain", "showgrid": False},
        yaxis={**layer_axis(v.source, rows), "scaleanchor": "x", "constrain": "domain", "showgrid": False},
        template="plotly_white",
        **_heatmap_size(rows, cols),
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
    best match is not above chance are drawn as hollow markers. For distance-like measures (lower =
    more similar, `analyses.similarity.LOWER_IS_SIMILAR`) the best match is the row's minimum.
    """
    v, n_permutations = _view(record, null, alpha, source, target)
    rows, cols = v.values.shape
    pick = np.nanargmin if v.measure in LOWER_IS_SIMILAR else np.nanargmax
    best = pick(v.values, axis=1)
    score = v.values[np.arange(rows), best]
    above = np.ones(rows, bool) if v.above is None else v.above[np.arange(rows), best]
    hover = (
        f"{v.source} layer %{{x}} → {v.target} layer %{{y}}<br>{v.label} %{{customdata:.4f}}<extra></extra>"
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
    colour = _colour(v)
    fig.add_trace(
        go.Scatter(
            x=list(range(rows)),
            y=best,
            mode="lines+markers",
            customdata=score,
            name=f"best {v.target} layer",
            hovertemplate=hover,
            line={"color": "#555", "width": 1.5},
            marker={
                "size": 10,
                "color": score,
                "colorscale": colour["colorscale"],
                "cmin": colour["zmin"],
                "cmax": colour["zmax"],
                "showscale": True,
                "colorbar": {"title": {"text": v.label, "side": "right"}, "thickness": 16},
                "symbol": np.where(above, "circle", "circle-open").tolist(),
                "line": {"width": 2.5},  # a 1-px ring in pale yellow-green vanished on white
            },
        )
    )
    fig.update_layout(
        title=_title(
            title or f"Best-matching {v.target} layer for each {v.source} layer",
            v.chance_note("hollow markers", alpha, n_permutations),
        ),
        xaxis={**layer_axis(v.source, rows), "range": [-0.5, rows - 0.5]},
        yaxis={**layer_axis(v.target, cols), "range": [-0.5, cols - 0.5]},
        template="plotly_white",
        height=520,
        margin={"t": 120},
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
    )
    return fig


def _or_nan(values: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.full_like(like, np.nan) if values is None else values


def _title(text: str, subtitle: str) -> dict:
    return {"text": text + (f"<br><sup>{subtitle}</sup>" if subtitle else "")}
