"""Plotly figures of steering: behaviour vs fluency cost with Pareto fronts, per-layer support of a steerer."""

from __future__ import annotations

import html
from typing import Any

from .steerer import Steerer


def behaviour_vs_cost(result: Any, *, behaviour: str = "rate", cost: str = "kl", title: str | None = None) -> Any:
    """One line per steerer (points = strengths), its Pareto front dashed, the unsteered point as a star."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels: dict[str, list[dict]] = {}
    for r in result.rows:
        labels.setdefault(r["label"], []).append(r)
    for lab, rows in labels.items():
        rows = sorted(rows, key=lambda r: r["strength"])
        fig.add_trace(
            go.Scatter(
                x=[r[cost] for r in rows],
                y=[r[behaviour] for r in rows],
                mode="lines+markers",
                name=html.escape(lab),
                text=[f"strength {r['strength']:g}" for r in rows],
                hovertemplate="%{text}<br>" + f"{cost} %{{x:.4g}}<br>{behaviour} %{{y:.3f}}<extra></extra>",
            )
        )
    front = result.pareto(behaviour=behaviour, cost=cost)
    fig.add_trace(
        go.Scatter(
            x=[r[cost] for r in front],
            y=[r[behaviour] for r in front],
            mode="lines",
            line={"dash": "dash", "color": "black"},
            name="Pareto front (all)",
        )
    )
    if result.baseline:
        fig.add_trace(
            go.Scatter(
                x=[0.0],
                y=[result.baseline.get(behaviour, 0.0)],
                mode="markers",
                marker={"symbol": "star", "size": 14, "color": "gray"},
                name="unsteered",
            )
        )
    fig.update_layout(
        title=html.escape(title or f"steering: {behaviour} vs {cost}"),
        xaxis_title=html.escape(f"{cost} (fluency cost, lower is better)"),
        yaxis_title=html.escape(f"{behaviour} (target style share)"),
        template="plotly_white",
    )
    if cost == "kl":
        fig.update_xaxes(type="log")
    return fig


def support_figure(steerer: Steerer, *, title: str | None = None) -> Any:
    """Per site: units edited (support) and the group norms ``‖ω−1‖₂``, ``‖b‖₂`` (switched-off layers are 0)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sites = steerer.sites
    sup = steerer.support()
    norms = steerer.norms()
    names = [html.escape(s) for s in sites]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("units edited", "group norms"))
    fig.add_trace(go.Bar(x=names, y=[sup[s] for s in sites], name="support"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[norms[s]["scale"] for s in sites], name="‖ω−1‖₂"), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=[norms[s]["bias"] for s in sites], name="‖b‖₂"), row=1, col=2)
    fig.update_layout(
        title=html.escape(title or f"{steerer.method}: per-site support ({steerer.n_parameters} parameters)"),
        template="plotly_white",
        barmode="group",
    )
    return fig
