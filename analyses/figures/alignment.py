"""Plotly token-alignment map: the source and target token rows of one text, linked by the target grid.

    >>> from analyses.figures.alignment import alignment_map, fan_in_histogram
    >>> al = stitch.TokenAlignment.build(text, A.tokenizer, B.tokenizer)
    >>> alignment_map(al, source_name="Llama-3", target_name="Mistral").show()
    >>> fan_in_histogram(alignment_summary(texts, A.tokenizer, B.tokenizer), source="Llama-3", target="Mistral")

The text is wrapped into lines of `chars_per_line` characters; each line shows the source tokens
(top row) and the target tokens (bottom row) as boxes at their character spans. A grey link joins
each target token's end to the end of the source token that feeds it; green bars between the rows
mark shared boundaries. Zero-width tokens (BOS, leading byte pieces of a split character) are thin boxes. Hover
shows ids, token text and spans. Readable for a few hundred tokens (zoom for more).
"""

from __future__ import annotations

import plotly.graph_objects as go

from stitch.alignment import TokenAlignment

_ROW_GAP, _LINE_GAP, _BOX = 1.25, 3.2, 0.9
_PX = 28  # pixels per y unit, whatever the line count: boxes 25 px tall, lines 90 px apart
# Light alternating shades: dark token text stays legible on both (the darker pair hid it).
_SHADES = {"source": ("#c6dbef", "#8fbfe0"), "target": ("#fdd9b5", "#fdae6b")}
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
    n_lines = max(1, -(-len(al.text) // chars_per_line))
    top, bottom = _BOX + 0.15, -(n_lines - 1) * _LINE_GAP - _ROW_GAP - 0.15
    margin = {"l": 20, "r": 20, "t": 110, "b": 20}
    how = (
        f"each {target_name} token reads {source_name}'s state at the last {source_name} token ending "
        "at or before its end; hover a token for ids and spans"
    )
    fig.update_layout(
        title=f"Token alignment: {source_name} ({len(al.source_ids)} tokens) → {target_name} "
        f"({len(al.target_ids)} tokens), {len(al.shared_boundaries)} shared boundaries<br><sup>{how}</sup>",
        height=round(_PX * (top - bottom)) + margin["t"] + margin["b"],
        width=max(700, 13 * chars_per_line),
        margin=margin,
        plot_bgcolor="white",
        xaxis={"visible": False, "range": [-1, chars_per_line + 1]},
        yaxis={"visible": False, "range": [bottom, top]},
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
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
            hovers.append(f"{name} token {k}: {label!r}<br>id {ids[k]}, {where}{_feeds(al, side, k)}")
    traces = [
        go.Scatter(
            x=xs,
            y=ys,
            fill="toself",
            mode="lines",
            line={"width": 0.5, "color": "white"},
            fillcolor=_SHADES[side][shade],
            hoverinfo="skip",
            showlegend=shade == 1,
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
            textfont={"family": "monospace", "size": 11, "color": "#222"},
            showlegend=False,
            legendgroup=side,
        )
    )
    return traces


def _feeds(al: TokenAlignment, side: str, k: int) -> str:
    """For a target token's hover: which source token's state it reads (target grid)."""
    if side != "target":
        return ""
    i = al.target_to_source[k].item()
    return (
        "<br>reads no source state" if i < 0 else f"<br>reads source token {i}: {_label(al, 'source', i)!r}"
    )


def _links(al: TokenAlignment, width: int) -> go.Scatter:
    """A line from the end of each feeding source token to the end of the target token it feeds.

    A source token on an earlier wrapped line gets a stub to the left edge of the target's line
    instead: a straight line back to it would cut across every line in between.
    """
    xs, ys = [], []
    src_end, tgt_end = al.source_spans[:, 1].tolist(), al.target_spans[:, 1].tolist()
    for j, i in enumerate(al.target_to_source.tolist()):
        if i < 0:
            continue
        (ls, cs), (lt, ct) = _where(src_end[i], width), _where(tgt_end[j], width)
        if ls != lt:
            ls, cs = lt, -0.6
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
    """Bars in the gap between the rows where both tokenizations end at the same place.

    Only in the gap: drawn through the boxes (as before) they crossed out most token labels.
    """
    xs, ys = [], []
    for j in al.shared_boundaries[:, 1].tolist():
        line, col = _where(al.target_spans[j, 1].item(), width)
        xs += [col, col, None]
        ys += [_row_y(line, "target") + _BOX, _row_y(line, "source"), None]
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line={"color": "#31a354", "width": 2},
        name="shared boundary",
        hoverinfo="skip",
    )


def fan_in_histogram(
    summary, title: str | None = None, *, source: str = "source", target: str = "target"
) -> go.Figure:
    """Bar chart of `AlignmentSummary.source_per_target_hist` (0 = target token repeats the last A state).

    Hover gives each bar's count and share of all target tokens; `source`/`target` name the tokenizers.
    """
    hist = list(summary.source_per_target_hist)
    share = [100 * h / max(1, sum(hist)) for h in hist]
    hover = (
        f"%{{y}} {target} tokens (%{{customdata:.1f}}%) contain the ends of %{{x}} {source} tokens"
        "<extra></extra>"
    )
    bar = go.Bar(x=list(range(len(hist))), y=hist, customdata=share, hovertemplate=hover)
    fig = go.Figure(bar.update(marker_color="#4292c6"))
    fig.update_layout(
        title=title
        or f"{source} tokens ending within each {target} token"
        "<br><sup>0: the token repeats the previous token's state</sup>",
        xaxis={"title": f"{source} tokens ending within the {target} token", "dtick": 1},
        yaxis_title=f"{target} tokens",
        bargap=0.1,
        template="plotly_white",
    )
    return fig
