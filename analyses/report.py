"""A self-contained HTML report: figures and tables assembled into one file that needs no network.

    >>> from analyses.report import Section, write_report
    >>> write_report("out/report.html", [Section("CKA", cka_fig), Section("Sweep", sweep_fig, note="...")],
    ...              title="Llama-3.1-8B → Mistral-7B")

plotly.js is embedded once (not fetched from a CDN), so the file opens offline and can be shared as is.
The report only assembles: analyses compute, `analyses.figures` draws.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly
import plotly.graph_objects as go

from stitch.files import write_atomic

# Wide figures and tables scroll inside their own box instead of spilling past the page column.
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2.2em;padding-bottom:.2em;
border-bottom:1px solid #ddd}.wide{overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}td{white-space:nowrap}
th{background:#f3f3f3;vertical-align:bottom}tr:nth-child(even) td{background:#fafafa}.text{text-align:left}
.note{color:#555;max-width:75ch}"""


@dataclass(frozen=True)
class Section:
    """A titled part of the report: a plotly figure, or a table given as a list of records."""

    title: str
    content: go.Figure | Sequence[dict]
    note: str = ""


def render_report(sections: Sequence[Section], title: str = "stitch report") -> str:
    """The report as one HTML string, plotly.js inlined once."""
    if not sections:
        raise ValueError("sections: expected at least one Section, got none")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts.append(_render(section.content, section.title))
    js = f"<script>{plotly.offline.get_plotlyjs()}</script>"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style>{js}</head><body>{''.join(parts)}</body></html>"
    )


def write_report(path: str | Path, sections: Sequence[Section], title: str = "stitch report") -> Path:
    """Render and write the report atomically (a reader never sees a half-written file)."""
    return write_atomic(path, render_report(sections, title))


def _render(content, title: str) -> str:
    if isinstance(content, go.Figure):
        return f'<div class="wide">{content.to_html(full_html=False, include_plotlyjs=False)}</div>'
    if isinstance(content, Sequence) and all(isinstance(r, dict) for r in content) and content:
        return f'<div class="wide">{_table(content)}</div>'
    raise TypeError(
        f"Section {title!r}: content must be a plotly Figure or a non-empty list of dicts, "
        f"got {type(content).__name__}"
    )


def _table(records: Sequence[dict]) -> str:
    columns = list(dict.fromkeys(k for r in records for k in r))
    text = {c for c in columns if all(isinstance(r.get(c, ""), str) for r in records)}  # aligned left
    head = "".join(_header(c, c in text) for c in columns)
    rows = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _header(column, text: bool) -> str:
    """A header cell; <wbr> lets long snake_case names break at underscores, so wide tables fit."""
    name = html.escape(str(column)).replace("_", "_<wbr>")
    return f'<th class="text">{name}</th>' if text else f"<th>{name}</th>"


def _cell(value) -> str:
    """A table cell: numbers to 4 significant digits, right-aligned; text left-aligned."""
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    if isinstance(value, int | bool):
        return f"<td>{value}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'
