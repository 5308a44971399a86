"""Figures of steering (drawn through :mod:`mechwork.viz`): behaviour vs fluency cost with the Pareto front, and
the per-site support of a steerer."""

from __future__ import annotations

from typing import Any

from ..viz import PALETTE, Line, lines
from .steerer import Steerer


def behaviour_vs_cost(result: Any, *, behaviour: str = "rate", cost: str = "kl", title: str | None = None) -> Any:
    """One line per steerer (points = strengths), the Pareto front over all of them dashed, the unsteered point."""
    groups: dict[str, list[dict]] = {}
    for r in result.rows:
        groups.setdefault(r["label"], []).append(r)
    series = []
    for i, (label, rows) in enumerate(groups.items()):
        rows = sorted(rows, key=lambda r: r["strength"])
        series.append(
            Line(
                [r[behaviour] for r in rows],
                x=[r[cost] for r in rows],
                name=label,
                color=PALETTE[i % len(PALETTE)],
                mode="lines+markers",
                hover=[f"{label}, strength {r['strength']:g}" for r in rows],
            )
        )
    front = result.pareto(behaviour=behaviour, cost=cost)
    series.append(
        Line(
            [r[behaviour] for r in front],
            x=[r[cost] for r in front],
            name="Pareto front",
            color="black",
            dash="dash",
            hover=[f"{r['label']}, strength {r['strength']:g}" for r in front],
        )
    )
    if result.baseline:
        series.append(
            Line(
                [result.baseline.get(behaviour, 0.0)],
                x=[0.0],
                name="unsteered",
                color="gray",
                mode="markers",
                marker="diamond",
            )
        )
    return lines(
        [series],
        title=title or f"steering: {behaviour} vs {cost}",
        subtitle="higher and further left is better",
        xlabel=f"{cost} (fluency cost)",
        ylabel=f"{behaviour} (target style share)",
        yrange=(0.0, 1.02) if behaviour in ("rate", "word_rate", "styled") else None,
    )


def support_figure(steerer: Steerer, *, title: str | None = None) -> Any:
    """Per site: units edited (support) and the group norms ``‖ω−1‖₂``, ``‖b‖₂`` (switched-off sites are 0)."""
    sites = steerer.sites
    sup, norms = steerer.support(), steerer.norms()
    return lines(
        [
            [Line([sup[s] for s in sites], x=sites, name="units edited", mode="lines+markers", color=PALETTE[0])],
            [
                Line(
                    [norms[s]["scale"] for s in sites], x=sites, name="‖ω−1‖₂", mode="lines+markers", color=PALETTE[1]
                ),
                Line([norms[s]["bias"] for s in sites], x=sites, name="‖b‖₂", mode="lines+markers", color=PALETTE[2]),
            ],
        ],
        titles=["support", "group norms"],
        title=title or f"{steerer.method}: per-site support ({steerer.n_parameters} parameters)",
        xlabel="site",
    )
