"""Figures of patching results: heatmaps with token labels, and method-vs-reference scatter plots (drawn by
:mod:`mechwork.viz`, which escapes every label; export with :func:`mechwork.viz.save_html`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..viz import Grid, Line, heatmaps, lines
from .result import METHOD_NAMES, PatchResult


def _panel(r: PatchResult, z: torch.Tensor, axes: tuple[str, ...], title: str) -> Grid:
    """One 2-D panel of ``z`` (the scores of one component)."""
    layers = [f"L{v}" for v in r.labels["layer"]]
    if axes == ("layer",):
        return Grid([z.tolist()], x=layers, y=[r.per], title=title, xlabel="layer")
    if axes == ("layer", "pos"):
        return Grid(z.tolist(), x=r.labels["pos"], y=layers, title=title, xlabel="position", ylabel="layer")
    if axes == ("layer", "head"):
        heads = [f"H{h}" for h in r.labels["head"]]
        return Grid(z.tolist(), x=heads, y=layers, title=title, xlabel="head", ylabel="layer")
    # (layer, pos, head): one row per head
    rows, ys = [], []
    for li, layer in enumerate(layers):
        for hi, head in enumerate(r.labels["head"]):
            col = z[li, :, hi]
            if bool(torch.isnan(col).all()):
                continue
            rows.append(col.tolist())
            ys.append(f"{layer}H{head}")
    return Grid(rows, x=r.labels["pos"], y=ys, title=title, xlabel="position", ylabel="head")


def plot_result(r: PatchResult, *, normalized: bool = True, title: str | None = None, zmax: float | None = None) -> Any:
    """Heatmap of ``r`` (one panel per component), diverging colours centred at zero."""
    z_all = r.normalized() if normalized else r.scores
    comps = r.labels.get("component", [r.aliases[0].rsplit(".", 1)[0]])
    inner = tuple(a for a in r.axes if a != "component")
    grids = [_panel(r, z_all[ci] if "component" in r.axes else z_all, inner, str(c)) for ci, c in enumerate(comps)]
    return heatmaps(
        grids,
        title=title or f"{METHOD_NAMES.get(r.method, r.method)} ({r.direction}, per {r.per})",
        subtitle=f"clean {r.clean:.3f}, corrupted {r.corrupted:.3f}",
        unit="normalised effect" if normalized else "metric change",
        zmax=zmax,
    )


def plot_comparison(
    reference: PatchResult, others: Sequence[PatchResult], *, normalized: bool = True, title: str | None = None
) -> Any:
    """Scatter of each method's scores against ``reference`` (usually activation patching), with Pearson r."""
    ref = (reference.normalized() if normalized else reference.scores).flatten()
    ref_name = METHOD_NAMES.get(reference.method, reference.method)
    series, lo, hi = [], float("inf"), -float("inf")
    for r in others:
        y = (r.normalized() if normalized else r.scores).flatten()
        ok = ~(torch.isnan(ref) | torch.isnan(y))
        lo, hi = min(lo, float(ref[ok].min()), float(y[ok].min())), max(hi, float(ref[ok].max()), float(y[ok].max()))
        nodes = [str(n) for n in r.nodes()] if int(ok.sum()) == len(r.nodes()) else None
        name = f"{METHOD_NAMES.get(r.method, r.method)} (r = {r.correlation(reference):.3f})"
        series.append(Line(y[ok].tolist(), x=ref[ok].tolist(), name=name, mode="markers", hover=nodes))
    if lo < hi:
        series.append(Line([lo, hi], x=[lo, hi], name="y = x", color="grey", dash="dot"))
    return lines([series], title=title or f"methods vs {ref_name}", xlabel=ref_name, ylabel="method", height=480)
