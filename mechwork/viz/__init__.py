"""Plotly figures shared by the capabilities. Every figure renders in Jupyter and exports to self-contained
HTML with :func:`save_html` (plotly.js inlined, so it works offline); token strings are HTML-escaped."""

from .figures import escape_text, escape_tokens, heatmap, layer_line, save_html

__all__ = ["heatmap", "layer_line", "save_html", "escape_tokens", "escape_text"]
