"""Declarative figures: capabilities describe series and panels, this module draws them with plotly.

Every string that reaches the figure (titles, axis titles, trace names, category labels, hover text) is
HTML-escaped here, once, so that a capability cannot forget it; all figures share one template.

>>> fig = lines([[Line([0.9, 0.5], x=["resid_pre.0", "resid_pre.1"], name="leace: probe")]],
...             titles=["probe accuracy"], xlabel="site", ylabel="accuracy", yrange=(0, 1.02))
>>> fig = heatmaps([Grid(z, x=tokens, y=["L0", "L1"], xlabel="position", ylabel="layer")], unit="effect")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .figures import escape_text, escape_tokens

TEMPLATE = "plotly_white"
#: colours for series that have no colour of their own (plotly's first six)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
DASHES = ("solid", "dash", "dot", "dashdot")
SYMBOLS = ("circle", "square", "diamond", "x")


@dataclass(frozen=True)
class Line:
    """One series of a line or scatter panel.

    Parameters
    ----------
    y : sequence of float
    x : sequence or None
        Positions (numbers or category labels); default ``0..len(y)-1``.
    name : str
        Legend entry.
    color, dash : str or None
        Line colour and dash (``"solid"``, ``"dash"``, ``"dot"``, ``"dashdot"``).
    mode : {"lines", "markers", "lines+markers"}
    marker : str or None
        Marker symbol (``"circle"``, ``"square"``, ...); markers are drawn on the line.
    width : float or None
        Line width.
    hover : sequence of str or None
        Per-point hover text, shown above the point's x and y.
    """

    y: Sequence[float]
    x: Sequence[Any] | None = None
    name: str = ""
    color: str | None = None
    dash: str | None = None
    mode: str = "lines"
    marker: str | None = None
    width: float | None = None
    hover: Sequence[str] | None = None


@dataclass(frozen=True)
class Grid:
    """One heatmap panel: ``z[row][col]`` (``None`` for a gap) with row labels ``y`` and column labels ``x``."""

    z: Sequence[Sequence[float | None]]
    x: Sequence[str]
    y: Sequence[str]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""


def _title(title: str, subtitle: str = "") -> dict[str, str]:
    text = escape_text(title)
    if subtitle:
        text += f"<br><sup>{escape_text(subtitle)}</sup>"
    return {"text": text}


def _labels(values: Sequence[Any]) -> list[Any]:
    return [escape_text(v) if isinstance(v, str) else v for v in values]


def lines(
    panels: Sequence[Sequence[Line]],
    *,
    titles: Sequence[str] = (),
    title: str = "",
    subtitle: str = "",
    xlabel: str = "",
    ylabel: str = "",
    yrange: tuple[float, float] | None = None,
    height: int = 450,
    width: int | None = None,
) -> Any:
    """Line / scatter panels side by side (one list of :class:`Line` per panel), sharing axis titles."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = max(1, len(panels))
    fig = make_subplots(rows=1, cols=n, subplot_titles=[escape_text(t) for t in titles] or None)
    for col, panel in enumerate(panels, start=1):
        for line in panel:
            x = list(range(len(line.y))) if line.x is None else _labels(line.x)
            style: dict[str, Any] = {k: v for k, v in (("color", line.color), ("dash", line.dash)) if v is not None}
            if line.width is not None:
                style["width"] = line.width
            mode = line.mode if line.marker is None or "markers" in line.mode else line.mode + "+markers"
            trace: dict[str, Any] = {"x": x, "y": list(line.y), "mode": mode, "name": escape_text(line.name)}
            if "lines" in line.mode:
                trace["line"] = style
            if line.marker is not None or "markers" in line.mode:
                trace["marker"] = {"symbol": line.marker} if line.marker else {}
                if line.color is not None:
                    trace["marker"]["color"] = line.color
            if line.hover is not None:
                trace["text"] = [escape_text(h) for h in line.hover]
                trace["hovertemplate"] = (
                    f"%{{text}}<br>{escape_text(xlabel)} %{{x:.4g}}<br>{escape_text(ylabel)} %{{y:.4g}}<extra></extra>"
                )
            fig.add_trace(go.Scatter(**trace), row=1, col=col)
    fig.update_xaxes(title_text=escape_text(xlabel))
    fig.update_yaxes(title_text=escape_text(ylabel), range=list(yrange) if yrange else None)
    fig.update_layout(title=_title(title, subtitle), height=height, width=width, template=TEMPLATE)
    return fig


def heatmaps(
    grids: Sequence[Grid],
    *,
    title: str = "",
    subtitle: str = "",
    unit: str = "",
    zmax: float | None = None,
    colorscale: str = "RdBu",
) -> Any:
    """Heatmap panels stacked vertically on one diverging colour scale centred at zero (``zmax``: its half-range,
    default the largest absolute value). Category axes, first row at the top."""
    import math

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    finite = [abs(v) for g in grids for row in g.z for v in row if v is not None and not math.isnan(v)]
    lim = zmax if zmax is not None else (max(finite) if finite else 1.0) or 1.0
    several = len(grids) > 1
    fig = make_subplots(
        rows=max(1, len(grids)),
        cols=1,
        subplot_titles=[escape_text(g.title) for g in grids] if several else None,
        vertical_spacing=0.08 if several else 0.0,
    )
    u = escape_text(unit)
    for i, g in enumerate(grids):
        fig.add_trace(
            go.Heatmap(
                z=[[None if v is None or v != v else v for v in row] for row in g.z],
                x=escape_tokens(g.x),
                y=escape_tokens(g.y),
                colorscale=colorscale,
                zmid=0.0,
                zmin=-lim,
                zmax=lim,
                showscale=i == 0,
                colorbar={"title": {"text": u}},
                hoverongaps=False,
                hovertemplate=f"{escape_text(g.title)}<br>%{{y}} / %{{x}}<br>{u}: %{{z:.4f}}<extra></extra>",
            ),
            row=i + 1,
            col=1,
        )
        fig.update_xaxes(title_text=escape_text(g.xlabel), type="category", row=i + 1, col=1)
        fig.update_yaxes(title_text=escape_text(g.ylabel), type="category", autorange="reversed", row=i + 1, col=1)
    rows = max((len(g.y) for g in grids), default=1)
    fig.update_layout(
        title=_title(title, subtitle), height=max(320, 60 + len(grids) * max(200, 18 * rows)), template=TEMPLATE
    )
    return fig


def bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    height: int = 420,
) -> Any:
    """Grouped bars: one bar per series (legend entry) for every category on the x axis."""
    import plotly.graph_objects as go

    x = escape_tokens(categories)
    fig = go.Figure([go.Bar(name=escape_text(name), x=x, y=list(ys)) for name, ys in series.items()])
    fig.update_layout(
        barmode="group",
        title=_title(title),
        xaxis_title=escape_text(xlabel),
        yaxis_title=escape_text(ylabel),
        height=height,
        template=TEMPLATE,
    )
    return fig


def table(columns: Mapping[str, Sequence[Any]], *, title: str = "") -> Any:
    """A table figure: ``{header: cells}``, one column per entry (cells shown as escaped strings)."""
    import plotly.graph_objects as go

    headers = [escape_text(h) for h in columns]
    cells = [[escape_text(c) for c in col] for col in columns.values()]
    fig = go.Figure(go.Table(header={"values": headers}, cells={"values": cells}))
    fig.update_layout(title=_title(title), template=TEMPLATE)
    return fig


def markers(fig: Any, x: Sequence[str], y: Sequence[str], *, name: str, symbol: str = "x", color: str = "red") -> Any:
    """Overlay category markers (e.g. a matching) on a heatmap made by :func:`~mechwork.viz.heatmap`."""
    import plotly.graph_objects as go

    fig.add_trace(
        go.Scatter(
            x=escape_tokens(x),
            y=escape_tokens(y),
            mode="markers",
            marker={"symbol": symbol, "size": 14, "color": color},
            name=escape_text(name),
        )
    )
    return fig
