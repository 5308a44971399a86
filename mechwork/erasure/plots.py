"""Plotly figures of a layer sweep: where the concept is decodable, and what hooking the eraser does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..viz import escape_text as _esc


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    *,
    concept_task: str = "gender",
    tasks: Sequence[str] = ("ioi", "induction"),
    title: str = "",
) -> Any:
    """Two panels over sites: probe accuracy before/after erasure vs the majority rate; task accuracy with the
    eraser hooked in (dotted: the clean model). One colour per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    clean = next((r for r in rows if r.get("site") is None), None)
    fitted = [r for r in rows if r.get("site") is not None]
    group = lambda r: r.get("label") or r["method"]  # noqa: E731
    methods = list(dict.fromkeys(group(r) for r in fitted))
    sites = list(dict.fromkeys(r["site"] for r in fitted))
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            _esc(f"{concept_task} probes on erased activations"),
            "task accuracy with the eraser hooked in",
        ),
    )
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    first = [r for r in fitted if group(r) == methods[0]] if methods else []
    for probe, dash in (("linear", "solid"), ("mlp", "dot")):
        if first and f"{probe}_accuracy_before" in first[0]:
            fig.add_trace(
                go.Scatter(
                    x=sites,
                    y=[r[f"{probe}_accuracy_before"] for r in first],
                    name=f"{probe} probe, no erasure",
                    line=dict(color="gray", dash=dash),
                ),
                row=1,
                col=1,
            )
    if first:
        fig.add_trace(
            go.Scatter(
                x=sites, y=[r["majority"] for r in first], name="majority rate", line=dict(color="black", dash="dash")
            ),
            row=1,
            col=1,
        )
    for i, m in enumerate(methods):
        color = palette[i % len(palette)]
        rs = [r for r in fitted if group(r) == m]
        for probe, dash in (("linear", "solid"), ("mlp", "dot")):
            if f"{probe}_accuracy" in rs[0]:
                fig.add_trace(
                    go.Scatter(
                        x=[r["site"] for r in rs],
                        y=[r[f"{probe}_accuracy"] for r in rs],
                        name=_esc(f"{m}: {probe} probe"),
                        line=dict(color=color, dash=dash),
                    ),
                    row=1,
                    col=1,
                )
        for j, task in enumerate((concept_task, *tasks)):
            key = f"{task}_accuracy"
            if key in rs[0]:
                fig.add_trace(
                    go.Scatter(
                        x=[r["site"] for r in rs],
                        y=[r[key] for r in rs],
                        name=_esc(f"{m}: {task}"),
                        line=dict(color=color, dash=("solid", "dash", "dot", "dashdot")[j % 4]),
                        marker=dict(symbol=("circle", "square", "diamond", "x")[j % 4]),
                        mode="lines+markers",
                    ),
                    row=1,
                    col=2,
                )
    if clean:
        for j, task in enumerate((concept_task, *tasks)):
            key = f"{task}_accuracy"
            if key in clean:
                fig.add_trace(
                    go.Scatter(
                        x=sites,
                        y=[clean[key]] * len(sites),
                        name=_esc(f"clean model: {task}"),
                        line=dict(color="gray", dash=("solid", "dash", "dot", "dashdot")[j % 4], width=1),
                    ),
                    row=1,
                    col=2,
                )
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02])
    fig.update_xaxes(title_text="site")
    fig.update_layout(title=_esc(title or f"Erasing {concept_task}, site by site"), height=450, width=1100)
    return fig
