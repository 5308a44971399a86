"""Latents for people: a Jupyter card per latent, a text view, and an offline HTML dashboard of all latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .card import card_html, histogram_svg, stats_html
from .page import BYTES_FIXED, BYTES_PER_LATENT, render_dashboard, write_dashboard


def render_text(stats: Any, latents: Sequence[int], *, n: int = 5) -> str:
    """Plain-text cards of ``latents`` (label with its evidence, statistics, top ``n`` contexts)."""
    return "\n\n".join(stats[j].text(n) for j in latents)


__all__ = [
    "render_text",
    "render_dashboard",
    "write_dashboard",
    "card_html",
    "stats_html",
    "histogram_svg",
    "BYTES_PER_LATENT",
    "BYTES_FIXED",
]
