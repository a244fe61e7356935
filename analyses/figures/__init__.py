"""Plotly figures for analyses records: each function returns a plotly.graph_objects.Figure."""
