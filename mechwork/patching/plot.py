"""Plotly figures for patching results: heatmaps with token labels, and method-vs-reference scatter plots.

Token strings are HTML-escaped (plotly renders a subset of HTML in labels, so ``<bos>`` would vanish).
Figures render in Jupyter and export to self-contained HTML with :func:`mechwork.viz.save_html`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import torch

from ..viz import escape_tokens as _esc
from .result import METHOD_NAMES, PatchResult


def _panel(
    r: PatchResult, z: torch.Tensor, axes: tuple[str, ...]
) -> tuple[list[list[float | None]], list[str], list[str], str, str]:
    """(z rows, x labels, y labels, x title, y title) of one 2-D panel."""
    layers = [f"L{v}" for v in r.labels["layer"]]
    if axes == ("layer",):
        return [_row(z.tolist())], layers, [r.per], "layer", ""
    if axes == ("layer", "pos"):
        return [_row(x) for x in z.tolist()], _esc(r.labels["pos"]), layers, "position", "layer"
    if axes == ("layer", "head"):
        return [_row(x) for x in z.tolist()], [f"H{h}" for h in r.labels["head"]], layers, "head", "layer"
    # (layer, pos, head): one row per head
    rows, ys = [], []
    for li, layer in enumerate(layers):
        for hi, head in enumerate(r.labels["head"]):
            col = z[li, :, hi]
            if bool(torch.isnan(col).all()):
                continue
            rows.append(_row(col.tolist()))
            ys.append(f"{layer}H{head}")
    return rows, _esc(r.labels["pos"]), ys, "position", "head"


def _row(xs: list[float]) -> list[float | None]:
    return [None if x != x else x for x in xs]


def plot_result(r: PatchResult, *, normalized: bool = True, title: str | None = None, zmax: float | None = None) -> Any:
    """Heatmap of ``r`` (one panel per component), diverging colours centred at zero."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    z_all = r.normalized() if normalized else r.scores
    comps = r.labels.get("component", [r.aliases[0].rsplit(".", 1)[0]])
    inner = tuple(a for a in r.axes if a != "component")
    finite = z_all[~torch.isnan(z_all)]
    lim = zmax if zmax is not None else (float(finite.abs().max()) if finite.numel() else 1.0) or 1.0
    fig = make_subplots(
        rows=len(comps),
        cols=1,
        subplot_titles=_esc(comps) if len(comps) > 1 else None,
        vertical_spacing=0.08 if len(comps) > 1 else 0.0,
    )
    unit = "normalised effect" if normalized else "metric change"
    for ci, comp in enumerate(comps):
        z = z_all[ci] if "component" in r.axes else z_all
        rows, xs, ys, xt, yt = _panel(r, z, inner)
        fig.add_trace(
            go.Heatmap(
                z=rows,
                x=xs,
                y=ys,
                colorscale="RdBu",
                zmid=0.0,
                zmin=-lim,
                zmax=lim,
                showscale=ci == 0,
                colorbar={"title": {"text": unit}},
                hoverongaps=False,
                hovertemplate=f"{html.escape(str(comp))}<br>%{{y}} / %{{x}}<br>{unit}: %{{z:.4f}}<extra></extra>",
            ),
            row=ci + 1,
            col=1,
        )
        fig.update_xaxes(title_text=xt, type="category", row=ci + 1, col=1)
        fig.update_yaxes(title_text=yt, type="category", autorange="reversed", row=ci + 1, col=1)
    head = title or f"{METHOD_NAMES.get(r.method, r.method)} ({r.direction}, per {r.per})"
    sub = f"clean {r.clean:.3f}, corrupted {r.corrupted:.3f}"
    fig.update_layout(
        title={"text": f"{html.escape(head)}<br><sup>{html.escape(sub)}</sup>"},
        height=max(320, 60 + len(comps) * max(200, 18 * len(ys))),
        template="plotly_white",
    )
    return fig


def plot_comparison(
    reference: PatchResult, others: Sequence[PatchResult], *, normalized: bool = True, title: str | None = None
) -> Any:
    """Scatter of each method's scores against ``reference`` (usually activation patching), with Pearson r."""
    import plotly.graph_objects as go

    fig = go.Figure()
    ref = (reference.normalized() if normalized else reference.scores).flatten()
    lo, hi = float("inf"), -float("inf")
    for r in others:
        y = (r.normalized() if normalized else r.scores).flatten()
        ok = ~(torch.isnan(ref) | torch.isnan(y))
        lo, hi = min(lo, float(ref[ok].min()), float(y[ok].min())), max(hi, float(ref[ok].max()), float(y[ok].max()))
        name = f"{METHOD_NAMES.get(r.method, r.method)} (r = {r.correlation(reference):.3f})"
        fig.add_trace(
            go.Scatter(
                x=ref[ok].tolist(),
                y=y[ok].tolist(),
                mode="markers",
                name=html.escape(name),
                text=[html.escape(str(n)) for n in r.nodes()] if int(ok.sum()) == len(r.nodes()) else None,
                hovertemplate="%{text}<br>reference %{x:.4f}<br>method %{y:.4f}<extra></extra>",
            )
        )
    if lo < hi:
        fig.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"}, name="y = x")
        )
    fig.update_layout(
        title=html.escape(title or f"methods vs {METHOD_NAMES.get(reference.method, reference.method)}"),
        xaxis_title=html.escape(METHOD_NAMES.get(reference.method, reference.method)),
        yaxis_title="method",
        template="plotly_white",
        height=480,
    )
    return fig
