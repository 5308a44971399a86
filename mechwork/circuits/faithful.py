"""Faithfulness of a circuit graph and faithfulness-vs-size curves (METHODS.md 5.5).

Edge graphs: run the clean prompts; for every edge ``u -> v`` of the model *not* in the circuit, the
contribution of ``u`` to ``v``'s input is replaced by its value on the corrupted prompt (``"corrupt"``) or by
its mean over the corrupted prompts (``"mean"``): ``input_v += a_u(corrupted) - a_u(this run)``, with
``a_u(this run)`` the sender's live output (so ablations upstream propagate, as in EAP-IG's
``evaluate_graph``). ``faithfulness = (m(C) - m(corrupted)) / (m(clean) - m(corrupted))``. With every edge
ablated the run *is* the corrupted run (``empty`` reports it, a built-in check).

Node graphs (from a ``PatchResult``) are evaluated with :func:`mechwork.patching.faithfulness_many`.
Several circuits (the points of a curve) are evaluated as rows of the same forward passes.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError
from ..core.hooks import run_with_hooks
from ..core.sites import site as resolve_site
from ..patching import eval_metric, prepare
from .graph import Graph, GraphEdge
from .structure import QKV, Slot, Structure, capture_hooks

ABLATIONS = ("corrupt", "mean")


@dataclass
class CircuitFaithfulness:
    """Faithfulness of one circuit: ``value = (metric - corrupted) / (clean - corrupted)``."""

    value: float
    metric: float
    clean: float
    corrupted: float
    empty: float
    n_edges: int
    n_edges_total: int
    ablation: str = "corrupt"
    seconds: float = 0.0
    n_nodes: int | None = None

    def __repr__(self) -> str:
        nodes = "" if self.n_nodes is None else f"{self.n_nodes} latent/error nodes, "
        return (
            f"CircuitFaithfulness({self.value:.3f} with {nodes}{self.n_edges} of {self.n_edges_total} edges, "
            f"{self.ablation} ablation; m(C)={self.metric:.4g}, clean={self.clean:.4g}, corrupted={self.corrupted:.4g})"
        )

    def _repr_html_(self) -> str:
        return (
            f"<b>Circuit faithfulness</b> {self.value:.3f} ({self.ablation} ablation): "
            f"{self.n_edges} of {self.n_edges_total} edges; metric {self.metric:.4g} "
            f"(clean {self.clean:.4g}, corrupted {self.corrupted:.4g}, empty circuit {self.empty:.4g})"
        )


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-``n`` edges (or nodes) of a graph for each ``n`` in ``sizes``."""

    sizes: list[int]
    values: list[float]
    n_total: int
    label: str = ""
    ablation: str = "corrupt"
    unit: str = "edges"
    info: dict[str, Any] = field(default_factory=dict)

    def smallest(self, target: float = 0.8) -> int | None:
        """The smallest size whose faithfulness reaches ``target`` (None if none does)."""
        for s, v in zip(self.sizes, self.values):
            if v >= target:
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "sizes": self.sizes,
            "values": self.values,
            "n_total": self.n_total,
            "ablation": self.ablation,
            "unit": self.unit,
        }

    def plot(self, *others: FaithfulnessCurve, title: str | None = None) -> Any:
        """A plotly figure of this curve (and ``others``): faithfulness against circuit size."""
        return plot_curves([self, *others], title=title)

    def __repr__(self) -> str:
        pts = ", ".join(f"{s}:{v:.2f}" for s, v in zip(self.sizes, self.values))
        return f"FaithfulnessCurve({self.label or '?'}, {self.unit} of {self.n_total}: {pts})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{s}</td><td>{v:.3f}</td></tr>" for s, v in zip(self.sizes, self.values))
        return (
            f"<b>Faithfulness curve</b> {html.escape(self.label)} ({self.ablation} ablation, "
            f"{self.n_total} {self.unit})<table><tr><th>{self.unit}</th><th>faithfulness</th></tr>{rows}</table>"
        )


def plot_curves(curves: Sequence[FaithfulnessCurve], *, title: str | None = None) -> Any:
    """Plotly lines of faithfulness against the number of edges (nodes) kept, log x axis (via mechwork.viz)."""
    from ..viz import Line, lines

    series = [
        Line(
            y=c.values,
            x=[max(s, 0.5) for s in c.sizes],  # 0 kept is drawn at 0.5 on the log axis
            name=c.label or "circuit",
            mode="lines+markers",
            hover=[f"{c.label}: top {s} of {c.n_total} {c.unit}" for s in c.sizes],
        )
        for c in curves
    ]
    unit = curves[0].unit if curves else "edges"
    fig = lines(
        [series],
        title=title or "faithfulness vs circuit size",
        subtitle=f"{curves[0].ablation if curves else 'corrupt'} ablation; 1 = clean run, 0 = corrupted run",
        xlabel=f"{unit} kept (top by |score|)",
        ylabel="faithfulness",
        height=420,
        width=720,
    )
    fig.update_xaxes(type="log")
    return fig


def faithfulness(
    graph: Graph,
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    ablation: str = "corrupt",
    batch_size: int | None = None,
    saes: dict[str, Any] | None = None,
) -> CircuitFaithfulness | Any:
    """Faithfulness of ``graph`` as a circuit (edge graphs: its edges; node graphs: its nodes; latent graphs:
    its latents and error terms, with ``saes`` spliced; see :func:`~.latents.latent_faithfulness`)."""
    if graph.level == "node":
        return _node_faithfulness(graph, model, batch, metric, [graph], ablation, batch_size)[0]
    if graph.metadata.get("per_position"):  # evaluated on its component edges (all positions of a kept edge)
        graph = graph.aggregate()
    if graph.level == "latent":
        from .latents import latent_faithfulness

        if saes is None:
            raise ConfigError("faithfulness of an SAE-latent graph needs the SAEs: saes={site: sae}")
        return latent_faithfulness(graph, model, batch, metric, saes=saes, ablation=ablation)
    return faithfulness_many(model, batch, metric, [graph.edges], ablation=ablation, batch_size=batch_size)[0]


def faithfulness_curve(
    graph: Graph,
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    sizes: Sequence[int] | None = None,
    ablation: str = "corrupt",
    batch_size: int | None = None,
    label: str | None = None,
) -> FaithfulnessCurve:
    """Faithfulness of the top-``n`` edges (nodes, for node graphs) of ``graph`` by ``|weight|``, per ``n``."""
    if graph.metadata.get("per_position"):  # ranked and evaluated on its component edges
        graph = graph.aggregate()
    units = graph.edges if graph.level != "node" else [e for e in graph.edges if e.dst == "logits"]
    total = len(units)
    if total == 0:
        raise DataError("the graph has no edges: nothing to rank")
    if sizes is None:
        sizes = sorted({min(total, int(round(x))) for x in _geometric(total)})
    sizes = [int(s) for s in sizes]
    bad = [s for s in sizes if not 0 <= s <= total]
    if bad:
        raise ConfigError(
            f"sizes must be between 0 and {total} (the graph's {('edges', 'nodes')[graph.level == 'node']}), got {bad}"
        )
    ranked = sorted(units, key=lambda e: -abs(e.weight))
    label = label or str(graph.metadata.get("method", ""))
    if graph.level == "node":
        subs = [graph.subgraph(ranked[:k]) for k in sizes]
        res = _node_faithfulness(graph, model, batch, metric, subs, ablation, batch_size)
        return FaithfulnessCurve(sizes, [r.value for r in res], total, label, ablation, "nodes")
    res = faithfulness_many(model, batch, metric, [ranked[:k] for k in sizes], ablation=ablation, batch_size=batch_size)
    return FaithfulnessCurve(
        sizes, [r.value for r in res], total, label, ablation, "edges", {"empty": res[0].empty if res else None}
    )


def _geometric(total: int) -> list[float]:
    out, x = [0.0], 1.0
    while x < total:
        out.append(x)
        x *= 2 if x < 4 else 1.6
    return out + [float(total)]


def _node_faithfulness(
    graph: Graph, model: Any, batch: Any, metric: Any, subs: list[Graph], ablation: str, batch_size: int | None
) -> list[Any]:
    from ..patching import faithfulness_many as node_faithfulness_many
    from ..patching.grid import Node

    universe = [Node(n.site, n.index, n.pos) for n in graph.nodes if n.kind != "logits" and n.site]
    universe = graph.metadata.get("universe_nodes") and [Node(*u) for u in graph.metadata["universe_nodes"]] or universe
    sets = [[Node(n.site, n.index, n.pos) for n in g.nodes if n.kind != "logits" and n.site] for g in subs]
    return node_faithfulness_many(
        model, batch, metric, sets, universe=universe, ablation=ablation, batch_size=batch_size
    )


def faithfulness_many(
    model: Any,
    batch: Any,
    metric: Any,
    circuits: Sequence[Sequence[GraphEdge]],
    *,
    ablation: str = "corrupt",
    batch_size: int | None = None,
) -> list[CircuitFaithfulness]:
    """Faithfulness of several edge sets of ``model``'s graph, evaluated as rows of shared forward passes."""
    t0 = time.perf_counter()
    if ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    st = Structure(model)
    keeps = [_keep_mask(st, edges) for edges in circuits] + [torch.zeros_like(st.valid)]  # last: the empty circuit
    ablate = torch.stack([(st.valid & ~k) for k in keeps]).float()  # [C, R, S]
    sites = [resolve_site(model, n) for n in st.capture_names]
    with st.flags():
        ctx = prepare(model, batch, metric, sites, "noise", skip_caches=False)
        corr = st.sender_outputs(ctx.src_acts)
        if ablation == "mean":
            corr = corr.mean(1, keepdim=True).expand_as(corr)
        n, C = ctx.n, len(keeps)
        rows = [(c, b) for c in range(C) for b in range(n)]
        step = batch_size or max(1, min(256, 4096 // max(1, ctx.n_pos)))
        metric_sum = torch.zeros(C, dtype=torch.float64)
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            cs = torch.tensor([c for c, _ in chunk])
            prompts = torch.tensor([b for _, b in chunk], device=ctx.base_tokens.device)
            live: dict[str, Tensor] = {}

            def provide(slot: Slot, act: Tensor, cs=cs, prompts=prompts, live=live) -> Tensor | None:
                k = st.n_inputs(slot)
                idx = st.slots[slot]
                mask = ablate[cs][:, idx, :k].to(act.device, act.dtype)  # [rows, heads, k]
                if not bool(mask.any()):
                    return None
                diff = corr[:k, prompts] - st.sender_outputs(live, k)  # [k, rows, pos, d]
                out = torch.einsum("rhs,srpd->rphd", mask, diff.to(act.dtype))
                return out if slot[1] in QKV else out[:, :, 0]

            hooks = capture_hooks(st.capture_names, live) + st.hooks(provide)
            with torch.no_grad():
                logits = run_with_hooks(model, ctx.base_tokens[prompts], hooks)
                m = eval_metric(ctx.metric, logits, ctx.batch.select(prompts), "circuit run")
            ctx.account(len(chunk), None, 0)
            metric_sum.index_add_(0, cs, m.double().cpu())
    values = (metric_sum / n).tolist()
    clean, corrupted, empty = ctx.clean_metric, ctx.corrupted_metric, values[-1]
    gap = clean - corrupted
    total = int(st.valid.sum())
    return [
        CircuitFaithfulness(
            value=float("nan") if gap == 0 else (v - corrupted) / gap,
            metric=v,
            clean=clean,
            corrupted=corrupted,
            empty=empty,
            n_edges=int(k.sum()),
            n_edges_total=total,
            ablation=ablation,
            seconds=time.perf_counter() - t0,
        )
        for v, k in zip(values[:-1], keeps[:-1])
    ]


def _keep_mask(st: Structure, edges: Sequence[GraphEdge]) -> Tensor:
    """``[receivers, senders]`` mask of the given edges; unknown nodes or edges are named in the error."""
    send = {s.id: j for j, s in enumerate(st.senders)}
    recv = {(r.node, r.kind): i for i, r in enumerate(st.receivers)}
    keep = torch.zeros_like(st.valid)
    for e in edges:
        if e.src not in send:
            raise DataError(
                f"edge {e.id}: node {e.src!r} is not a sender of this model "
                f"({st.n_layers} layers, {st.n_heads} heads; e.g. input, a0.h0, m0)"
            )
        key = (e.dst, e.kind)
        if key not in recv:
            raise DataError(
                f"edge {e.id}: {e.dst!r} has no input {e.kind!r} in this model "
                f"({st.n_layers} layers, {st.n_heads} heads; receivers are a{{L}}.h{{H}} q/k/v, m{{L}}, logits)"
            )
        i, j = recv[key], send[e.src]
        if not st.valid[i, j]:
            raise DataError(f"edge {e.id} goes against the model's order (sender not upstream of the receiver)")
        keep[i, j] = True
    return keep


__all__ = [
    "faithfulness",
    "faithfulness_many",
    "faithfulness_curve",
    "plot_curves",
    "CircuitFaithfulness",
    "FaithfulnessCurve",
]
