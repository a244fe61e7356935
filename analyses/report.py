"""A self-contained HTML report that is a record: header, definitions, summary first, then the sections.

    >>> from analyses.report import Header, Section, write_report
    >>> header = Header.collect(config={"kind": "affine"}, models=[model_facts(A), model_facts(B)])
    >>> write_report("out/report.html", [Section("CKA", cka_fig), Section("Sweep", rows, note="...")],
    ...              title="Llama-3.1-8B → Mistral-7B", header=header, summary=[{"metric": ..., "value": ...}])
    >>> write_report("runs/b/report.html", sections, plotlyjs="beside")   # plotly.min.js written once beside

The header says what ran (config, models: family, layers, width, vocabulary, parameters), with what (library
versions, git commit), when and on what hardware. `DEFINITIONS` says what every number means, in the words
of `stitch.splice.score`. plotly.js is inlined once by default, so the file opens offline and can be shared
as is; `plotlyjs="beside"` writes `plotly.min.js` next to the report instead (one copy for a directory of
reports). Every piece of text (titles, config values, model names, generations) is HTML-escaped, and figure
JSON has `<`, `>`, `&`, U+2028 and U+2029 escaped, so no text can end a script or open a comment. NaN and
infinite values are shown as flagged cells, never as numbers, and figures leave them out.
The report only assembles: analyses compute, `analyses.figures` draws.
"""

from __future__ import annotations

import datetime
import html
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import plotly
import plotly.graph_objects as go
import torch

from stitch.files import write_atomic

LIBRARIES = ("stitch-lm", "torch", "transformers", "tokenizers", "plotly", "numpy")
PLOTLYJS = ("inline", "beside")
PLOTLYJS_FILE = "plotly.min.js"
DEFINITIONS = {
    "layer ℓ": "the residual stream entering block ℓ (0 = embedding output, L = last block's output, before "
    "the final norm).",
    "splice N → M": "A runs blocks [0, N); the adapter maps A's layer-N states; B runs blocks [M, L) and its "
    "head. M = 0 with injection inputs_embeds is the embedding-injection baseline.",
    "target / source grid": "target: B runs on its own tokens, each fed A's state at the last A token ending "
    "at or before it; source: B runs on A's positions, labelled with the B token starting where each A token "
    "ends.",
    "position classes": "shared: B's token ends exactly where an A token ends (both have read the same "
    "prefix); lagging: the A state B receives ends strictly before B's token does; none: no A token has "
    "finished yet. Scores are given per class and over all positions; the headline is shared.",
    "CE spliced / native": "held-out cross-entropy (nats per B label) of B reading A's mapped states / of B "
    "alone, on the same texts and labels.",
    "CE context-free": "B's add-one-smoothed unigram over its next-token labels in the training texts: what "
    "a predictor that knows nothing of the text reaches (the reference).",
    "CE mean-ablation": "B fed its mean state at the write point (mean over the training pairs): a "
    "diagnostic, often worse than uniform.",
    "loss recovered": "(CE context-free − CE spliced) / (CE context-free − CE native): 1 = B lost nothing, "
    "0 = A's states told B nothing a unigram does not know, < 0 = worse than that; NaN (flagged) when the "
    "denominator is below 1e-3 nats.",
    "linear CKA": "similarity of two layers' states over the same paired positions, in [0, 1], invariant to "
    "rotation and scale.",
}
# Wide figures and tables scroll inside their own box instead of spilling past the page column.
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2.2em;padding-bottom:.2em;
border-bottom:1px solid #ddd}.wide{overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}td{white-space:nowrap}
th{background:#f3f3f3;vertical-align:bottom}tr:nth-child(even) td{background:#fafafa}.text{text-align:left}
td.text{white-space:pre-wrap;max-width:60ch}td.flag{background:#fde8e8!important;color:#a00}
.note{color:#555;max-width:75ch}.flags{color:#a00}dl{font-size:.9em}dt{font-weight:600}dd{margin:0 0 .4em 1.5em}
details{margin:.5em 0}"""
# inside a script, text must not close it or open a comment; raw line separators end JS lines in old engines
_JS_ESCAPES = {"</": "<\\/", "<!--": "<\\!--", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@dataclass(frozen=True)
class Section:
    """A titled part of the report: a plotly figure, or a table given as a list of records."""

    title: str
    content: go.Figure | Sequence[dict]
    note: str = ""
    flags: tuple[str, ...] = ()  # degenerate values of this section, said in words


@dataclass(frozen=True)
class Header:
    """What ran, with what, when and where; `Header.collect(...)` fills the environment in."""

    config: dict = field(default_factory=dict)
    models: tuple[dict, ...] = ()
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    date: str = ""
    hardware: dict = field(default_factory=dict)

    @classmethod
    def collect(cls, config: dict | None = None, models: Sequence[dict] = ()) -> Header:
        """The header of a run happening now, in this process."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(dict(config or {}), tuple(models), library_versions(), git_commit(), now, hardware())

    def to_dict(self) -> dict:
        return {**asdict(self), "models": list(self.models)}

    @classmethod
    def from_dict(cls, data: dict) -> Header:
        return cls(**{**data, "models": tuple(data.get("models", ()))})


def model_facts(model, **extra) -> dict:
    """Family, layers, width, vocabulary and parameters of a `stitch.HookedLM` (plus `extra` facts)."""
    return {
        "name": model.name, "family": getattr(model.model.config, "model_type", "?"), "layers": model.n_layers,
        "width": model.d_model, "vocabulary": model.vocab_size,
        "parameters": sum(p.numel() for p in model.model.parameters()), **extra,
    }


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the checkout stitch runs from, if it is one (with "+dirty" for local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def hardware() -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "machine": platform.machine(), "system": platform.platform(terse=True), "processor": platform.processor() or "?",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpus": ", ".join(gpus) or "none",
    }


def render_report(
    sections: Sequence[Section], title: str = "stitch report", *, header: Header | None = None,
    summary: Sequence[dict] = (), definitions: dict | None = None, plotlyjs: str = "inline",
) -> str:
    """The report as one HTML string: title, header, summary, definitions, sections; plotly.js once."""
    if not sections:
        raise ValueError("sections: expected at least one Section, got none")
    if plotlyjs not in PLOTLYJS:
        raise ValueError(f"plotlyjs: got {plotlyjs!r}; valid: {list(PLOTLYJS)}")
    parts = [f"<h1>{_esc(title)}</h1>"]
    if summary:
        parts += ["<h2>Summary</h2>", f'<div class="wide">{_table(summary)}</div>']
    if header is not None:
        parts.append(_header(header))
    parts.append(_definitions(DEFINITIONS if definitions is None else definitions))
    for i, section in enumerate(sections):
        parts.append(f"<h2>{_esc(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{_esc(section.note)}</p>')
        parts += [f'<p class="flags">⚠ {_esc(flag)}</p>' for flag in section.flags]
        parts.append(_render(section.content, section.title, f"figure-{i}"))
    script = (
        f"<script>{plotly.offline.get_plotlyjs()}</script>" if plotlyjs == "inline"
        else f'<script src="{PLOTLYJS_FILE}"></script>'
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style>{script}</head><body>{''.join(parts)}</body></html>"
    )


def write_report(path: str | Path, sections: Sequence[Section], title: str = "stitch report", **options) -> Path:
    """Render and write the report atomically; with `plotlyjs="beside"` also `plotly.min.js` (once)."""
    path = Path(path)
    text = render_report(sections, title, **options)
    if options.get("plotlyjs") == "beside" and not (path.parent / PLOTLYJS_FILE).is_file():
        write_atomic(path.parent / PLOTLYJS_FILE, plotly.offline.get_plotlyjs())
    return write_atomic(path, text)


def _esc(value) -> str:
    """HTML-escaped text; line and paragraph separators as character references (they break JS and JSON)."""
    return html.escape(str(value), quote=True).replace("\u2028", "&#x2028;").replace("\u2029", "&#x2029;")


def _header(header: Header) -> str:
    models = [dict(m) for m in header.models]
    run = {"date": header.date, "git commit": header.git_commit or "not a git checkout", **header.hardware}
    parts = ["<h2>Run</h2>"]
    if models:
        parts.append(f'<div class="wide">{_table(models)}</div>')
    parts.append(f'<div class="wide">{_table([run])}</div>')
    parts.append(f'<div class="wide">{_table([header.versions])}</div>' if header.versions else "")
    if header.config:
        rows = [{"option": k, "value": _plain(v)} for k, v in header.config.items()]
        parts.append(f'<details open><summary>Configuration</summary><div class="wide">{_table(rows)}</div></details>')
    return "".join(parts)


def _definitions(definitions: dict) -> str:
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in definitions.items())
    return f"<details><summary>Definitions</summary><dl>{items}</dl></details>" if items else ""


def _plain(value):
    """A config value as a cell: numbers stay numbers, everything else its text."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _render(content, title: str, div_id: str) -> str:
    if isinstance(content, go.Figure):
        return f'<div class="wide">{_figure(content, div_id)}</div>'
    if isinstance(content, Sequence) and not isinstance(content, str) and content and all(isinstance(r, dict) for r in content):
        return f'<div class="wide">{_table(content)}</div>'
    raise TypeError(
        f"Section {title!r}: content must be a plotly Figure or a non-empty list of dicts, "
        f"got {type(content).__name__}"
    )


def _figure(fig: go.Figure, div_id: str) -> str:
    """The figure's div and script (a fixed id: the same records give the same file); plotly already
    escapes its JSON, this makes sure nothing in it can end the script."""
    out = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
    open_end = out.find(">", out.find("<script")) + 1
    close = out.rfind("</script>")
    body = out[open_end:close]
    for raw, escaped in _JS_ESCAPES.items():
        body = body.replace(raw, escaped)
    return out[:open_end] + body + out[close:]


def _table(records: Sequence[dict]) -> str:
    columns = list(dict.fromkeys(k for r in records for k in r))
    text = {c for c in columns if all(isinstance(r.get(c, ""), str) for r in records)}  # aligned left
    head = "".join(_head(c, c in text) for c in columns)
    rows = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _head(column, text: bool) -> str:
    """A header cell; <wbr> lets long snake_case names break at underscores, so wide tables fit."""
    name = _esc(column).replace("_", "_<wbr>")
    return f'<th class="text">{name}</th>' if text else f"<th>{name}</th>"


def _cell(value) -> str:
    """A table cell: numbers to 4 significant digits, right-aligned; NaN/None flagged; text left-aligned."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        word = "n/a" if value is None else ("NaN" if math.isnan(value) else str(value))
        return f'<td class="flag" title="undefined or degenerate">{word} ⚠</td>'
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    if isinstance(value, int):
        return f"<td>{value}</td>"
    return f'<td class="text">{_esc(value)}</td>'
