"""Influence on the logits and pruning (the circuit-tracer rule, METHODS.md 6.1).

``A`` is the adjacency matrix (rows = targets, columns = sources) of ``|weight|``, summed over parallel edges
(a head's q, k and v inputs), each row normalised to sum 1. A node's influence is
``logit_weights @ (A + A^2 + ...)`` (the series ends: the graph is acyclic). Pruning by influence keeps the
smallest set of nodes whose influence reaches the fraction ``influence`` of the total (logits, embeddings and
tokens are always kept), then, among the edges between kept nodes, the smallest set whose edge influence
``A_norm[t, s] * (influence[t] + logit_weight[t])`` reaches ``edge_influence``, then drops nodes left without
an outgoing edge (or, for components that read inputs, without an incoming one), until nothing changes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from .graph import Graph, GraphEdge

ALWAYS_KEPT = ("logits", "input", "token")
SOURCES = ("input", "token", "error")  # nodes without inputs


def _matrix(graph: Graph) -> tuple[Tensor, Tensor, Tensor]:
    """(|A| row-normalised [N, N], row sums [N], logit weights [N])."""
    idx = {n.id: i for i, n in enumerate(graph.nodes)}
    N = len(graph.nodes)
    A = torch.zeros(N, N, dtype=torch.float64)
    for e in graph.edges:
        A[idx[e.dst], idx[e.src]] += abs(e.weight)
    rows = A.sum(1)
    An = A / rows.clamp_min(1e-300)[:, None]
    An[rows == 0] = 0
    lw = torch.tensor([1.0 if n.kind == "logits" else 0.0 for n in graph.nodes], dtype=torch.float64)
    if lw.sum() > 0:
        lw = lw / lw.sum()
    return An, rows, lw


def influence(graph: Graph) -> Tensor:
    """Influence of every node on the logits; stored in each ``node.influence`` and returned ``[n_nodes]``."""
    An, _, lw = _matrix(graph)
    cur = lw @ An
    total = cur.clone()
    for _ in range(len(graph.nodes)):
        if float(cur.abs().sum()) < 1e-15:
            break
        cur = cur @ An
        total += cur
    for n, v in zip(graph.nodes, total.tolist()):
        n.influence = float(v)
    return total


def cumulative_rank(values: Tensor) -> Tensor:
    """For each entry, the cumulative share of the total up to and including it in descending order
    (smaller = more important; the Neuronpedia ``influence`` field)."""
    total = float(values.sum())
    if total <= 0:
        return torch.ones_like(values)
    order = values.argsort(descending=True)
    out = torch.empty_like(values)
    out[order] = values[order].cumsum(0) / total
    return out


def _check_fraction(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a number in (0, 1], got {v!r}") from e
    if not (0 < f <= 1) or math.isnan(f):
        raise ConfigError(f"{name} must be in (0, 1], got {v!r}")
    return f


def _smallest_prefix(values: Tensor, fraction: float) -> Tensor:
    """Indices of the fewest largest ``values`` whose sum reaches ``fraction`` of the total."""
    total = float(values.sum())
    order = values.argsort(descending=True)
    if total <= 0:
        return order[:0]
    cum = values[order].cumsum(0) / total
    k = int((cum < fraction - 1e-12).sum()) + 1
    return order[: min(k, len(order))]


def prune(
    graph: Graph,
    *,
    influence: float | None = None,
    edge_influence: float = 0.98,
    threshold: float | None = None,
    top_n: int | None = None,
) -> Graph:
    """A pruned copy of ``graph``.

    Parameters
    ----------
    influence : float in (0, 1]
        Keep the fewest nodes reaching this share of the total influence on the logits, then edges reaching
        ``edge_influence`` of the edge influence (the circuit-tracer rule).
    edge_influence : float in (0, 1]
        See above (circuit-tracer's ``edge_threshold``, default 0.98).
    threshold : float
        Keep edges with ``|weight| >= threshold``.
    top_n : int
        Keep the ``top_n`` edges with the largest ``|weight|``.

    Nodes left without a path role (no outgoing edge, or no incoming edge for a component that reads inputs)
    are then dropped until nothing changes; logits, embeddings and tokens are always kept.
    """
    given = [x is not None for x in (influence, threshold, top_n)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of influence=, threshold=, top_n=")
    before = (graph.n_nodes, graph.n_edges)
    if not graph.edges:
        raise ConfigError("the graph has no edges to prune")
    note: dict[str, Any]
    if influence is not None:
        f = _check_fraction("influence", influence)
        fe = _check_fraction("edge_influence", edge_influence)
        inf = globals()["influence"](graph)
        An, _, lw = _matrix(graph)
        candidates = [i for i, n in enumerate(graph.nodes) if n.kind not in ALWAYS_KEPT]
        keep = {n.id for n in graph.nodes if n.kind in ALWAYS_KEPT}
        if candidates:
            cand = torch.tensor(candidates)
            keep |= {graph.nodes[int(cand[i])].id for i in _smallest_prefix(inf[cand].clamp_min(0), f)}
        idx = {n.id: i for i, n in enumerate(graph.nodes)}
        inside = [e for e in graph.edges if e.src in keep and e.dst in keep]
        rows = _matrix(graph)[1]
        score = torch.tensor(
            [
                abs(e.weight) / max(float(rows[idx[e.dst]]), 1e-300) * float(inf[idx[e.dst]] + lw[idx[e.dst]])
                for e in inside
            ],
            dtype=torch.float64,
        )
        edges = [inside[int(i)] for i in _smallest_prefix(score, fe)] if inside else []
        note = {"rule": "influence", "node_threshold": f, "edge_threshold": fe}
    elif threshold is not None:
        t = float(threshold)
        if math.isnan(t) or t < 0:
            raise ConfigError(f"threshold must be a non-negative number, got {threshold!r}")
        edges = [e for e in graph.edges if abs(e.weight) >= t]
        note = {"rule": "threshold", "threshold": t}
    else:
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ConfigError(f"top_n must be a positive integer, got {top_n!r}")
        edges = graph.top_edges(top_n)
        note = {"rule": "top_n", "top_n": top_n}
    edges = _clean(graph, edges)
    note.update(
        n_nodes_before=before[0],
        n_edges_before=before[1],
        n_nodes=len({e.src for e in edges} | {e.dst for e in edges} | _kept_ids(graph)),
        n_edges=len(edges),
        edge_fraction=len(edges) / max(before[1], 1),
    )
    out = graph.subgraph(edges, keep=_kept_ids(graph), note={"pruning": note})
    return out


def _kept_ids(graph: Graph) -> set[str]:
    return {n.id for n in graph.nodes if n.kind in ALWAYS_KEPT}


def _clean(graph: Graph, edges: list[GraphEdge]) -> list[GraphEdge]:
    """Drop edges of nodes without an outgoing edge (or an incoming one, for components with inputs)."""
    kind = {n.id: n.kind for n in graph.nodes}
    while True:
        outs = {e.src for e in edges}
        ins = {e.dst for e in edges}
        dead = set()
        for nid in outs | ins:
            k = kind[nid]
            if k in ALWAYS_KEPT:
                continue
            if nid not in outs or (k not in SOURCES and nid not in ins and _has_inputs(graph, nid)):
                dead.add(nid)
        if not dead:
            return edges
        edges = [e for e in edges if e.src not in dead and e.dst not in dead]


def _has_inputs(graph: Graph, nid: str) -> bool:
    """Whether the node had incoming edges in the full graph (node-level graphs have none)."""
    cache = graph.__dict__.setdefault("_dst_cache", None)
    if cache is None:
        cache = {e.dst for e in graph.edges}
        graph.__dict__["_dst_cache"] = cache
    return nid in cache


__all__ = ["influence", "prune", "cumulative_rank"]
