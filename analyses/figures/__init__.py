"""Plotly figures for analyses records: each function takes records or tensors and returns a `go.Figure`.

>>> from analyses import figures
>>> figures.similarity_heatmap(sim).show()
"""

from analyses.figures.alignment import alignment_map, fan_in_histogram
from analyses.figures.similarity import best_match_curve, similarity_heatmap
from analyses.figures.sweep import sweep_figure
from analyses.figures.training import training_curves, training_sections

__all__ = ["alignment_map", "best_match_curve", "fan_in_histogram", "similarity_heatmap", "sweep_figure", "training_curves", "training_sections"]
