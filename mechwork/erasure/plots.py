"""Figures of a layer sweep: where the concept is decodable, and what hooking the eraser does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..viz import DASHES, PALETTE, SYMBOLS, Line, lines


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    *,
    concept_task: str = "gender",
    tasks: Sequence[str] = ("ioi", "induction"),
    title: str = "",
) -> Any:
    """Two panels over sites: probe accuracy before/after erasure vs the majority rate; task accuracy with the
    eraser hooked in (dotted: the clean model). One colour per method."""
    clean = next((r for r in rows if r.get("site") is None), None)
    fitted = [r for r in rows if r.get("site") is not None]
    group = lambda r: r.get("label") or r["method"]  # noqa: E731
    methods = list(dict.fromkeys(group(r) for r in fitted))
    sites = list(dict.fromkeys(r["site"] for r in fitted))
    all_tasks = (concept_task, *tasks)
    probes: list[Line] = []
    behaviour: list[Line] = []
    first = [r for r in fitted if group(r) == methods[0]] if methods else []
    for probe, dash in (("linear", "solid"), ("mlp", "dot")):
        if first and f"{probe}_accuracy_before" in first[0]:
            y = [r[f"{probe}_accuracy_before"] for r in first]
            probes.append(Line(y, x=sites, name=f"{probe} probe, no erasure", color="gray", dash=dash))
    if first:
        probes.append(Line([r["majority"] for r in first], x=sites, name="majority rate", color="black", dash="dash"))
    for i, m in enumerate(methods):
        color = PALETTE[i % len(PALETTE)]
        rs = [r for r in fitted if group(r) == m]
        xs = [r["site"] for r in rs]
        for probe, dash in (("linear", "solid"), ("mlp", "dot")):
            if f"{probe}_accuracy" in rs[0]:
                y = [r[f"{probe}_accuracy"] for r in rs]
                probes.append(Line(y, x=xs, name=f"{m}: {probe} probe", color=color, dash=dash))
        for j, task in enumerate(all_tasks):
            if f"{task}_accuracy" in rs[0]:
                y = [r[f"{task}_accuracy"] for r in rs]
                behaviour.append(
                    Line(y, x=xs, name=f"{m}: {task}", color=color, dash=DASHES[j % 4], marker=SYMBOLS[j % 4])
                )
    for j, task in enumerate(all_tasks):
        if clean and f"{task}_accuracy" in clean:
            y = [clean[f"{task}_accuracy"]] * len(sites)
            behaviour.append(Line(y, x=sites, name=f"clean model: {task}", color="gray", dash=DASHES[j % 4], width=1))
    return lines(
        [probes, behaviour],
        titles=[f"{concept_task} probes on erased activations", "task accuracy with the eraser hooked in"],
        title=title or f"Erasing {concept_task}, site by site",
        xlabel="site",
        ylabel="accuracy",
        yrange=(0, 1.02),
        width=1100,
    )
