"""Plotly figures in notebooks that still draw in an HTML export opened offline, not only inside JupyterLab.

    >>> from analyses.figures.notebook import offline_figures
    >>> offline_figures()                  # once, in the first cell: plotly.js inlined once, here
    >>> figures.similarity_heatmap(sim)    # every later figure: a div + Plotly.newPlot with its data

plotly's stock renderers do not fit: "jupyterlab"/"plotly_mimetype" outputs a mimetype only JupyterLab draws
(nbconvert's HTML export and GitHub drop it), "notebook_connected" loads plotly.js from a CDN, and "notebook"
also adds a MathJax script from a CDN to every figure. This renderer ("stitch_offline") writes each figure as
`text/html` (its data in a `Plotly.newPlot` call, no script from the network); `offline_figures()` displays
plotly.js itself (~5 MB) once, so an executed notebook is self-contained. With `plotlyjs=False` (or
$STITCH_NOTEBOOK_PLOTLYJS=none) plotly.js is left out, for copies kept small in a repository: their figures
keep their data and say, in plain text, that the notebook must be run to draw them.
"""

from __future__ import annotations

import html
import os
import re

import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer
from plotly.offline import get_plotlyjs

NAME = "stitch_offline"
ENV = "STITCH_NOTEBOOK_PLOTLYJS"  # "inline" (default) or "none"
MODES = ("inline", "none")
_NOT_DRAWN = ("<p class='stitch-figure-note'>Figure: {title}. plotly.js is not stored in this copy of the notebook "
              "(to keep it small); run the notebook to draw it.</p>")


class OfflineRenderer(MimetypeRenderer):
    """Each figure as a div and a `Plotly.newPlot` call; plotly.js is expected on the page (see the module)."""

    def __init__(self, plotlyjs: bool = True, height: int = 500):
        self.plotlyjs = plotlyjs
        self.height = height

    def to_mimebundle(self, fig_dict):
        markup = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                           default_width="100%", default_height=self.height, validate=False)
        if not self.plotlyjs:  # what a reader sees where scripts do not run (GitHub) or plotly.js is absent
            title = fig_dict.get("layout", {}).get("title") or "untitled"
            title = title.get("text") or "untitled" if isinstance(title, dict) else title
            markup = _NOT_DRAWN.format(title=_plain(str(title))) + markup
        return {"text/html": markup}


def offline_figures(plotlyjs: bool | None = None) -> str:
    """Make `NAME` plotly's default renderer and, when `plotlyjs` (default: $STITCH_NOTEBOOK_PLOTLYJS != "none"),
    display plotly.js once in this cell's output. Returns the mode used, "inline" or "none"."""
    if plotlyjs is None:
        mode = os.environ.get(ENV, "inline").strip().lower() or "inline"
        if mode not in MODES:
            raise ValueError(f"{ENV}: got {mode!r}; valid: {list(MODES)}")
        plotlyjs = mode == "inline"
    pio.renderers[NAME] = OfflineRenderer(plotlyjs=plotlyjs)
    pio.renderers.default = NAME
    if plotlyjs:
        from IPython.display import HTML, display  # optional: only notebooks call this

        # window.PlotlyConfig first, as plotly's own notebook renderer does (MathJax stays local)
        display(HTML("<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
                     f"<script>{get_plotlyjs()}</script>"))
    return "inline" if plotlyjs else "none"


def _plain(title: str) -> str:
    """A plotly title (which may hold <br>, <sup>, ...) as escaped plain text."""
    return html.escape(" ".join(re.sub(r"<[^>]*>", " ", title).split()))


__all__ = ["ENV", "NAME", "OfflineRenderer", "offline_figures"]
