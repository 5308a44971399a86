"""Faithfulness of a node set: run the clean input with every node *outside* the set ablated.

``faithfulness = (m(C) - m(corrupted)) / (m(clean) - m(corrupted))`` (METHODS.md 5.5): 1 means the nodes in
``C`` alone carry the clean behaviour, 0 that the model behaves as on the corrupted input. Ablation replaces
an activation by its value on the corrupted prompt (``"corrupt"``, resample ablation) or by its mean over the
corrupted prompts at that position (``"mean"``). Nodes outside the *universe* (by default: every node of the
same kinds at the same granularity) are left alone, e.g. MLPs stay clean when the nodes are heads. Several
node sets are evaluated in one batched pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError
from ..core.sites import Site
from ..core.sites import site as resolve_site
from .activation import Cell, run_cells
from .grid import Node, build_grid, expand_sites, has_head_axis
from .result import PatchResult
from .runs import Context, prepare

ABLATIONS = ("corrupt", "mean")


@dataclass
class Faithfulness:
    """Faithfulness of one node set.

    Attributes
    ----------
    value : float
        ``(m(C) - m(corrupted)) / (m(clean) - m(corrupted))``.
    metric : float
        Mean metric with everything in the universe outside the nodes ablated.
    clean, corrupted : float
        Mean metric on the clean and the corrupted runs.
    empty : float
        Mean metric with the whole universe ablated (the empty circuit).
    relative_to_empty : float
        ``(m(C) - empty) / (m(clean) - empty)``: the share of what the universe carries.
    nodes : list of Node
    n_universe : int
    ablation : str
    """

    value: float
    metric: float
    clean: float
    corrupted: float
    empty: float
    relative_to_empty: float
    nodes: list[Node] = field(default_factory=list)
    n_universe: int = 0
    ablation: str = "corrupt"
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Faithfulness({self.value:.3f} with {len(self.nodes)} of {self.n_universe} nodes, {self.ablation} ablation; "
            f"m(C)={self.metric:.4g}, clean={self.clean:.4g}, corrupted={self.corrupted:.4g}, empty={self.empty:.4g})"
        )


def _granularity(nodes: Sequence[Node]) -> str:
    kinds = {(n.head is not None, n.pos is not None) for n in nodes}
    if len(kinds) != 1:
        raise DataError(
            "all nodes must have the same granularity (all heads, all positions, all head-positions or whole sites)"
        )
    head, pos = kinds.pop()
    return {(False, False): "layer", (False, True): "position", (True, False): "head", (True, True): "head_position"}[
        (head, pos)
    ]


def _universe(model: Any, nodes: Sequence[Node], universe: Any, n_pos: int) -> list[Node]:
    if isinstance(universe, PatchResult):
        return [Node.parse(model, n) for n in universe.nodes()]
    if universe is not None:
        return [Node.parse(model, n) for n in universe]
    if not nodes:
        raise DataError("give the universe (a PatchResult or a list of nodes) when the node set is empty")
    per = _granularity(nodes)
    kinds = list(dict.fromkeys(resolve_site(model, n.site).kind for n in nodes))
    sites = expand_sites(model, kinds, per)
    grid = build_grid(model, sites, per, n_pos, [str(i) for i in range(n_pos)])
    return [grid.node(s, p, h) for s in sites for p, h in grid.cells(s)]


def _mask(s: Site, node: Node, n_pos: int) -> Tensor:
    heads = int(s.shape[0]) if has_head_axis(s) else 1  # type: ignore[index]
    m = torch.zeros(n_pos, heads, dtype=torch.bool)
    if node.head is not None and not 0 <= node.head < heads:
        raise DataError(f"node {node}: head {node.head} out of range [0, {heads})")
    if node.pos is not None and not 0 <= node.pos < n_pos:
        raise DataError(f"node {node}: position {node.pos} out of range [0, {n_pos})")
    m[slice(None) if node.pos is None else node.pos, slice(None) if node.head is None else node.head] = True
    return m


def faithfulness_many(
    model: Any,
    batch: Any,
    metric: Any,
    node_sets: Sequence[Sequence[Any]],
    *,
    universe: Any = None,
    ablation: str = "corrupt",
    batch_size: int | None = None,
    resume: bool = True,
) -> list[Faithfulness]:
    """:func:`faithfulness` of several node sets over one universe, in one batched pass."""
    t0 = time.perf_counter()
    if ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    sets = [[Node.parse(model, n) for n in ns] for ns in node_sets]
    n_pos = int(batch.clean.shape[1])
    uni = _universe(model, sets[0] if sets else [], universe, n_pos)
    if not uni:
        raise DataError("the universe of nodes is empty")
    uni_set = set(uni)
    for ns in sets:
        outside = [str(n) for n in ns if n not in uni_set]
        if outside:
            raise DataError(f"nodes {outside[:5]} are not in the universe ({len(uni)} nodes, e.g. {uni[0]})")
    sites = expand_sites(model, list(dict.fromkeys(n.site for n in uni)), "layer")
    ctx = prepare(model, batch, metric, sites, "noise", skip_caches=resume)  # base = clean, source = corrupted
    sources = _sources(ctx, ablation)
    site_of = {s.name: s for s in sites}
    cells: list[Cell] = []
    for keep in sets + [[]]:  # the last cell ablates the whole universe
        kept = set(keep)
        masks: dict[str, Tensor] = {}
        for node in uni:
            if node in kept:
                continue
            m = _mask(site_of[node.site], node, ctx.n_pos)
            masks[node.site] = masks[node.site] | m if node.site in masks else m
        cells.append(list(masks.items()))
    effects = run_cells(ctx, cells, sources, batch_size=batch_size)
    base = ctx.base_metric.cpu()  # type: ignore[union-attr]
    values = (effects + base).mean(1)
    clean, corrupted, empty = ctx.clean_metric, ctx.corrupted_metric, float(values[-1])
    out = []
    for ns, v in zip(sets, values[:-1].tolist()):
        out.append(
            Faithfulness(
                value=_ratio(v - corrupted, clean - corrupted),
                metric=v,
                clean=clean,
                corrupted=corrupted,
                empty=empty,
                relative_to_empty=_ratio(v - empty, clean - empty),
                nodes=ns,
                n_universe=len(uni),
                ablation=ablation,
                seconds=time.perf_counter() - t0,
            )
        )
    return out


def _ratio(a: float, b: float) -> float:
    return float("nan") if b == 0 else a / b


def _sources(ctx: Context, ablation: str) -> dict[str, Tensor]:
    if ablation == "corrupt":
        return ctx.src_acts
    return {k: v.mean(0, keepdim=True).expand_as(v).contiguous() for k, v in ctx.src_acts.items()}


def faithfulness(
    model: Any,
    batch: Any,
    metric: Any,
    nodes: Sequence[Any],
    *,
    universe: Any = None,
    ablation: str = "corrupt",
    batch_size: int | None = None,
    resume: bool = True,
) -> Faithfulness:
    """The metric with everything in the universe outside ``nodes`` ablated, normalised to [corrupted, clean].

    Parameters
    ----------
    model, batch, metric
        As for :func:`~mechwork.patching.activation_patch`.
    nodes : sequence of Node or str
        The node set ``C``: :class:`Node` objects (e.g. ``result.top(5)``), ``"L1H3"``, ``"z.1 head 3"``,
        ``"resid_pre.2 pos 5"``; all at one granularity.
    universe : PatchResult or sequence of nodes, optional
        The nodes that are ablated unless in ``C``. Default: every node of the same kinds at the same
        granularity (all heads of the model when ``nodes`` are heads).
    ablation : {"corrupt", "mean"}
        Replace by the corrupted run's activation, or by its mean over the corrupted prompts per position.
    batch_size, resume
        As for :func:`~mechwork.patching.activation_patch`.
    """
    return faithfulness_many(
        model, batch, metric, [list(nodes)], universe=universe, ablation=ablation, batch_size=batch_size, resume=resume
    )[0]


def faithfulness_curve(
    model: Any,
    batch: Any,
    metric: Any,
    result: PatchResult,
    sizes: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
    *,
    absolute: bool = True,
    ablation: str = "corrupt",
    batch_size: int | None = None,
    resume: bool = True,
) -> list[Faithfulness]:
    """Faithfulness of the top-``k`` nodes of ``result`` for each ``k`` in ``sizes`` (universe: the result's cells)."""
    sizes = [int(k) for k in sizes if 0 <= int(k) <= result.scores.numel()]
    if not sizes:
        raise DataError("no valid sizes (each must be between 0 and the number of cells)")
    ranked = result.top(max(sizes), absolute=absolute)
    return faithfulness_many(
        model,
        batch,
        metric,
        [ranked[:k] for k in sizes],
        universe=result,
        ablation=ablation,
        batch_size=batch_size,
        resume=resume,
    )
