"""Plotly figures shared by the capabilities. Every figure renders in Jupyter and exports to self-contained
HTML with :func:`save_html` (plotly.js inlined, so it works offline); every string is HTML-escaped here.

Capabilities describe what to draw (:class:`Line` series in :func:`lines` panels, :class:`Grid` panels in
:func:`heatmaps`, or :func:`heatmap` / :func:`layer_line` for one tensor) instead of calling plotly themselves."""

from .charts import DASHES, PALETTE, SYMBOLS, Grid, Line, bars, heatmaps, lines, markers, table
from .figures import escape_text, escape_tokens, heatmap, layer_line, save_html

__all__ = [
    "heatmap",
    "layer_line",
    "lines",
    "heatmaps",
    "bars",
    "table",
    "markers",
    "Line",
    "Grid",
    "save_html",
    "escape_tokens",
    "escape_text",
    "PALETTE",
    "DASHES",
    "SYMBOLS",
]
