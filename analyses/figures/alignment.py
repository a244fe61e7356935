"""Plotly token-alignment map: the source and target token rows of one text, linked by the target grid.

    >>> from analyses.figures.alignment import alignment_map, fan_in_histogram
    >>> al = stitch.TokenAlignment.build(text, A.tokenizer, B.tokenizer)
    >>> alignment_map(al, source_name="Llama-3", target_name="Mistral").show()
    >>> fan_in_histogram(alignment_summary(texts, A.tokenizer, B.tokenizer)).show()

The text is wrapped into lines of `chars_per_line` characters; each line shows the source tokens
(top row) and the target tokens (bottom row) as boxes at their character spans. A grey link joins
each target token's end to the end of the source token that feeds it; dashed green bars mark shared
boundaries. Zero-width tokens (BOS, leading byte pieces of a split character) are thin boxes. Hover
shows ids, token text and spans. Readable for a few hundred tokens (zoom for more).
"""

from __future__ import annotations

import plotly.graph_objects as go

from stitch.alignment import TokenAlignment

_ROW_GAP, _LINE_GAP, _BOX = 1.25, 3.2, 0.9
_SHADES = {"source": ("#9ecae1", "#4292c6"), "target": ("#fdd0a2", "#f16913")}
_VISIBLE = str.maketrans({" ": "·", "\n": "⏎", "\t": "→", "\r": "␍"})


def alignment_map(
    al: TokenAlignment, source_name: str = "source", target_name: str = "target", chars_per_line: int = 80
) -> go.Figure:
    """The two token rows of `al.text` with the links between them (see the module docstring)."""
    if not isinstance(al, TokenAlignment):
        raise TypeError(f"al: expected a stitch.TokenAlignment, got {type(al).__name__}")
    if not isinstance(chars_per_line, int) or chars_per_line < 1:
        raise ValueError(f"chars_per_line: expected a positive integer, got {chars_per_line!r}")
    fig = go.Figure()
    for side, name in (("source", source_name), ("target", target_name)):
        for trace in _token_traces(al, side, name, chars_per_line):
            fig.add_trace(trace)
    fig.add_trace(_links(al, chars_per_line))
    fig.add_trace(_shared_bars(al, chars_per_line))
    n_lines = len(al.text) // chars_per_line + 1
    fig.update_layout(
        title=f"Token alignment: {source_name} ({len(al.source_ids)} tokens) → {target_name} "
        f"({len(al.target_ids)} tokens), {len(al.shared_boundaries)} shared boundaries",
        height=140 + 95 * n_lines,
        width=max(700, 13 * chars_per_line),
        plot_bgcolor="white",
        xaxis={"visible": False, "range": [-1, chars_per_line + 1]},
        yaxis={"visible": False, "range": [-_LINE_GAP * n_lines, _BOX + 0.3]},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom"},
        hovermode="closest",
    )
    return fig


def _where(pos: int, width: int) -> tuple[int, int]:
    """(line, column) of a character position; the text's end stays on the last line."""
    line, col = divmod(pos, width)
    return (line - 1, width) if col == 0 and line > 0 else (line, col)


def _row_y(line: int, side: str) -> float:
    return -line * _LINE_GAP - (_ROW_GAP if side == "target" else 0.0)


def _segments(start: int, end: int, width: int):
    """(line, x0, x1) pieces of a character span cut at line ends; zero-width spans get a thin box."""
    if start == end:
        line, col = _where(start, width)
        yield line, col - 0.08, col + 0.08
        return
    while start < end:
        line, col = divmod(start, width)
        stop = min(end, (line + 1) * width)
        yield line, col, col + (stop - start)
        start = stop


def _label(al: TokenAlignment, side: str, k: int) -> str:
    """The token's text, whitespace made visible and bytes of a cut character as �; specials by id."""
    if getattr(al, f"{side}_special")[k]:
        return f"[{getattr(al, f'{side}_ids')[k].item()}]"
    start, end = getattr(al, f"{side}_byte_spans")[k].tolist()
    return al.text.encode("utf-8")[start:end].decode("utf-8", errors="replace").translate(_VISIBLE)


def _fit(label: str, room: float) -> str:
    """The label cut to the box width (one character per column), with … where it was cut."""
    room = int(room)
    if len(label) <= room:
        return label
    return label[: room - 1] + "…" if room >= 2 else ("…" if room == 1 else "")


def _token_traces(al: TokenAlignment, side: str, name: str, width: int) -> list[go.Scatter]:
    """Filled boxes (one trace per shade) and a text/hover trace for one row of tokens."""
    boxes = {0: ([], []), 1: ([], [])}
    tx, ty, texts, hovers = [], [], [], []
    spans, ids = getattr(al, f"{side}_spans").tolist(), getattr(al, f"{side}_ids").tolist()
    byte_spans = getattr(al, f"{side}_byte_spans").tolist()
    for k, (s, e) in enumerate(spans):
        label = _label(al, side, k)
        where = f"characters [{s}, {e}), bytes [{byte_spans[k][0]}, {byte_spans[k][1]})"
        for line, x0, x1 in _segments(s, e, width):
            y = _row_y(line, side)
            xs, ys = boxes[k % 2]
            xs += [x0, x1, x1, x0, x0, None]
            ys += [y, y, y + _BOX, y + _BOX, y, None]
            tx.append((x0 + x1) / 2)
            ty.append(y + _BOX / 2)
            texts.append(_fit(label, x1 - x0))
            hovers.append(f"{name} token {k}: {label!r}<br>id {ids[k]}, {where}")
    traces = [
        go.Scatter(
            x=xs,
            y=ys,
            fill="toself",
            mode="lines",
            line={"width": 0.5, "color": "white"},
            fillcolor=_SHADES[side][shade],
            hoverinfo="skip",
            showlegend=shade == 0,
            name=f"{name} tokens",
            legendgroup=side,
        )
        for shade, (xs, ys) in boxes.items()
    ]
    traces.append(
        go.Scatter(
            x=tx,
            y=ty,
            mode="text",
            text=texts,
            hovertext=hovers,
            hoverinfo="text",
            textfont={"family": "monospace", "size": 10},
            showlegend=False,
            legendgroup=side,
        )
    )
    return traces


def _links(al: TokenAlignment, width: int) -> go.Scatter:
    """A line from the end of each feeding source token to the end of the target token it feeds."""
    xs, ys = [], []
    src_end, tgt_end = al.source_spans[:, 1].tolist(), al.target_spans[:, 1].tolist()
    for j, i in enumerate(al.target_to_source.tolist()):
        if i < 0:
            continue
        (ls, cs), (lt, ct) = _where(src_end[i], width), _where(tgt_end[j], width)
        xs += [cs, ct, None]
        ys += [_row_y(ls, "source"), _row_y(lt, "target") + _BOX, None]
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line={"color": "rgba(90,90,90,0.45)", "width": 1},
        name="target ← source (target grid)",
        hoverinfo="skip",
    )


def _shared_bars(al: TokenAlignment, width: int) -> go.Scatter:
    """Dashed bars through both rows where both tokenizations end at the same place."""
    xs, ys = [], []
    for j in al.shared_boundaries[:, 1].tolist():
        line, col = _where(al.target_spans[j, 1].item(), width)
        xs += [col, col, None]
        ys += [_row_y(line, "target") - 0.1, _row_y(line, "source") + _BOX + 0.1, None]
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line={"color": "#31a354", "width": 1.5, "dash": "dash"},
        name="shared boundary",
        hoverinfo="skip",
    )


def fan_in_histogram(summary, title: str = "Source tokens ending within each target token") -> go.Figure:
    """Bar chart of `AlignmentSummary.source_per_target_hist` (0 = target token repeats the last A state)."""
    hist = list(summary.source_per_target_hist)
    fig = go.Figure(go.Bar(x=list(range(len(hist))), y=hist, marker_color="#4292c6"))
    fig.update_layout(
        title=title,
        xaxis_title="source tokens ending within the target token",
        yaxis_title="target tokens",
        bargap=0.1,
    )
    return fig
