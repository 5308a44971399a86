"""Small, general plotly figure builders."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.io import atomic_write_text


def escape_tokens(tokens: Sequence[str]) -> list[str]:
    """HTML-escape token strings and make duplicates unique (plotly merges equal category labels)."""
    out, seen = [], {}
    for t in tokens:
        s = html.escape(str(t), quote=True)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.append(s if n == 0 else f"{s}\u200b{'' if n == 1 else n}")
    return out


def escape_text(text: object) -> str:
    """HTML-escape a title or axis title (plotly renders a subset of HTML in them; ``<bos>`` would vanish)."""
    return html.escape(str(text), quote=True)


def heatmap(
    values: Tensor,
    *,
    x: Sequence[str],
    y: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    zmid: float | None = 0.0,
    colorscale: str = "RdBu",
) -> Any:
    """A 2-D heatmap (rows ``y``, columns ``x``), diverging around ``zmid``."""
    import plotly.graph_objects as go

    z = values.detach().float().cpu().numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=escape_tokens(x),
            y=escape_tokens(y),
            zmid=zmid,
            colorscale=colorscale,
            reversescale=colorscale == "RdBu",
        )
    )
    fig.update_layout(
        title=escape_text(title),
        xaxis_title=escape_text(xlabel),
        yaxis_title=escape_text(ylabel),
        yaxis_autorange="reversed",
    )
    return fig


def layer_line(values: Tensor, labels: Sequence[str], *, title: str = "", ylabel: str = "") -> Any:
    """Mean over prompts per layer, with a band of +-1 standard deviation; ``values`` is ``[layer, batch]``."""
    import plotly.graph_objects as go

    v = values.detach().float().cpu()
    if v.ndim == 1:
        v = v[:, None]
    mean, std = v.mean(1), v.std(1) if v.shape[1] > 1 else torch.zeros(v.shape[0])
    x = escape_tokens(labels)
    fig = go.Figure(
        [
            go.Scatter(
                x=x, y=(mean + std).tolist(), mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"
            ),
            go.Scatter(
                x=x,
                y=(mean - std).tolist(),
                mode="lines",
                line=dict(width=0),
                fill="tonexty",
                fillcolor="rgba(31,119,180,0.2)",
                showlegend=False,
                hoverinfo="skip",
            ),
            go.Scatter(x=x, y=mean.tolist(), mode="lines+markers", name="mean"),
        ]
    )
    fig.update_layout(title=escape_text(title), xaxis_title="layer", yaxis_title=escape_text(ylabel))
    return fig


def save_html(fig: Any, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined, works offline), atomically."""
    path = Path(path)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
