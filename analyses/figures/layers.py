"""Layer axes shared by every figure: one wording for the title and one tick density.

    >>> from analyses.figures.layers import layer_axis
    >>> fig.update_xaxes(**layer_axis("Llama-3.1-8B", 33))  # "Llama-3.1-8B layer ℓ (0 = embeddings)"

Layer ℓ is the residual stream entering block ℓ (docs/design.md), so 0 is the embedding output: the axis
title says so, because "layer 0" otherwise reads as the first block.
"""

from __future__ import annotations

_MAX_LABELS = 12  # more layer labels than this run together on a 33-layer axis


def layer_title(model: str, symbol: str = "ℓ") -> str:
    """The title of a layer axis of `model`, e.g. "Mistral layer ℓ (0 = embeddings)"."""
    return f"{model} layer {symbol} (0 = embeddings)"


def layer_dtick(count: int) -> int:
    """Whole-layer tick spacing giving at most ~12 labels for `count` layers (never fractional layers)."""
    return max(1, count // _MAX_LABELS)


def layer_axis(model: str, count: int, symbol: str = "ℓ") -> dict:
    """Plotly axis settings for `count` layers of `model`: title, integer ticks from 0."""
    return {"title": layer_title(model, symbol), "tick0": 0, "dtick": layer_dtick(count)}
