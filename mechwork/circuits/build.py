"""Assembling graphs: from edge scores, from a node-level ``PatchResult``, and the metadata every graph carries."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core import decode as core_decode
from ..core import str_tokens as core_str_tokens
from ..core.errors import DataError, MechworkError
from .graph import Graph, GraphEdge, GraphNode
from .structure import Structure


def str_tokens(model: Any, ids: Tensor | list[int]) -> list[str]:
    """Token strings of a 1-d id sequence (:func:`mechwork.core.str_tokens`)."""
    out = core_str_tokens(model, torch.as_tensor(ids).reshape(1, -1))
    return [str(t) for t in out[0]]  # type: ignore[union-attr]


def top_tokens(model: Any, directions: Tensor, k: int = 5) -> list[list[str]]:
    """Top ``k`` tokens of each ``[n, d_model]`` direction projected on the unembedding ``W_U``."""
    W_U = getattr(model, "W_U", None)
    if W_U is None or directions.numel() == 0:
        return [[] for _ in range(directions.shape[0])]
    logits = directions.to(W_U.dtype).to(W_U.device) @ W_U
    idx = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.cpu()
    return [str_tokens(model, row) for row in idx]


def metadata(model: Any, batch: Any, metric: Any, *, method: str, level: str, **extra: Any) -> dict[str, Any]:
    """Provenance of a graph: model, prompt (first of the batch), task, metric, method."""
    cfg = model.cfg
    n = int(batch.clean.shape[0])
    pos = int(batch.pos[0]) if getattr(batch, "pos", None) is not None else int(batch.clean.shape[1]) - 1
    toks = str_tokens(model, batch.clean[0, : pos + 1])
    meta: dict[str, Any] = {
        "model": str(getattr(model, "mechwork_spec", None) or getattr(cfg, "model_name", type(model).__name__)),
        "backend": type(model).__name__,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "method": method,
        "level": level,
        "task": getattr(batch, "task", None),
        "metric": _metric_name(metric, batch),
        "n_prompts": n,
        "prompt": _decode(model, batch.clean[0, : pos + 1], toks),
        "prompt_tokens": toks,
        "corrupted_prompt": _decode(model, batch.corrupted[0, : pos + 1], None),
        "target_pos": pos,
    }
    if getattr(batch, "answer", None) is not None:
        meta["answer"] = int(batch.answer[0])
        meta["answer_token"] = str_tokens(model, [int(batch.answer[0])])[0]
    if getattr(batch, "wrong", None) is not None:
        meta["wrong_token"] = str_tokens(model, [int(batch.wrong[0])])[0]
    logits = extra.pop("logits", None)
    if logits is not None and "answer" in meta:
        meta["answer_prob"] = float(torch.softmax(logits[0, pos].float(), -1)[meta["answer"]])
    meta.update(extra)
    return meta


def _decode(model: Any, ids: Tensor, toks: list[str] | None) -> str:
    try:
        return core_decode(model, ids)
    except MechworkError:  # no tokenizer: the joined token strings
        return "".join(toks if toks is not None else str_tokens(model, ids))


def _metric_name(metric: Any, batch: Any) -> str:
    if metric is None:
        return f"{getattr(batch, 'task', 'task')} metric"
    if hasattr(metric, "prompts"):
        return f"{getattr(metric, 'name', type(metric).__name__)} metric"
    return str(getattr(metric, "__name__", type(metric).__name__))


def edge_graph(
    st: Structure,
    scores: Tensor,
    meta: dict[str, Any],
    *,
    clean_out: Tensor | None = None,
    batch: Any = None,
) -> Graph:
    """A graph with every valid edge of ``st`` weighted by ``scores [receivers, senders]``."""
    model = st.model
    tops: list[list[str]] = [[] for _ in st.senders]
    if clean_out is not None and batch is not None:  # mean clean output at the target position, in vocab space
        n = clean_out.shape[1]
        pos = batch.pos.to(clean_out.device)
        at = clean_out[:, torch.arange(n, device=clean_out.device), pos].mean(1)  # [S, d]
        tops = top_tokens(model, at)
    nodes: dict[str, GraphNode] = {}
    for j, s in enumerate(st.senders):
        site = (
            "hook_embed"
            if s.kind == "input"
            else f"blocks.{s.layer}.attn.hook_z"
            if s.kind == "head"
            else f"blocks.{s.layer}.hook_mlp_out"
        )
        label = "embeddings" if s.kind == "input" else s.id
        index = s.head if s.kind != "input" or batch is None else int(batch.clean[0, int(batch.pos[0])])
        nodes[s.id] = GraphNode(s.id, s.kind, s.layer, index, None, site, 0.0, label=label, top_tokens=tops[j])
    nodes["logits"] = GraphNode(
        "logits", "logits", st.n_layers, meta.get("answer"), None, "", 0.0, label=f"metric: {meta.get('metric', '')}"
    )
    edges = []
    valid = st.valid
    for i, r in enumerate(st.receivers):
        for j in valid[i].nonzero().flatten().tolist():
            w = float(scores[i, j])
            edges.append(GraphEdge(st.senders[j].id, r.node, w, r.kind))
            nodes[st.senders[j].id].score += w
    nodes["logits"].score = sum(e.weight for e in edges if e.dst == "logits")
    return Graph(list(nodes.values()), edges, meta)


def position_graph(
    st: Structure,
    edges: list[GraphEdge],
    used: set[tuple[str, int]],
    meta: dict[str, Any],
    *,
    clean_out: Tensor,
    batch: Any,
) -> Graph:
    """A per-position graph from :func:`~.positions.eap_per_position` edges (nodes ``{component}@{pos}``)."""
    kinds = {s.id: s for s in st.senders}
    tops = top_tokens(st.model, clean_out.mean(1).flatten(0, 1)) if clean_out is not None else []
    P = int(clean_out.shape[2])
    nodes: dict[str, GraphNode] = {}
    for base, p in sorted(used, key=lambda x: (x[1], x[0])):
        nid = f"{base}@{p}"
        if base == "logits":
            nodes[nid] = GraphNode(nid, "logits", st.n_layers, meta.get("answer"), p, "", 0.0, label="metric")
            continue
        s = kinds[base]
        j = st.senders.index(s)
        site = (
            "hook_embed"
            if s.kind == "input"
            else f"blocks.{s.layer}." + ("attn.hook_z" if s.kind == "head" else "hook_mlp_out")
        )
        index = int(batch.clean[0, p]) if s.kind == "input" else s.head
        label = f"{base} at position {p}"
        nodes[nid] = GraphNode(
            nid, s.kind, s.layer, index, p, site, 0.0, label=label, top_tokens=tops[j * P + p] if tops else []
        )
    for e in edges:
        nodes[e.src].score += e.weight
    return Graph(list(nodes.values()), edges, meta)


def aggregate(graph: Graph) -> Graph:
    """Sum a per-position graph over positions: one node per component, edge weights summed per input kind."""
    import re

    def base(nid: str) -> str:
        return re.sub(r"@\d+$", "", nid)

    weights: dict[tuple[str, str, str], float] = {}
    for e in graph.edges:
        key = (base(e.src), base(e.dst), e.kind)
        weights[key] = weights.get(key, 0.0) + e.weight
    nodes: dict[str, GraphNode] = {}
    for n in graph.nodes:
        b = base(n.id)
        if b not in nodes:
            index = None if n.kind == "input" else n.index
            nodes[b] = GraphNode(
                b, n.kind, n.layer, index, None, n.site, 0.0, n.activation, None, b if n.kind != "logits" else n.label
            )
    edges = [GraphEdge(s, d, w, k) for (s, d, k), w in weights.items()]
    for e in edges:
        nodes[e.src].score += e.weight
    meta = {**graph.metadata, "per_position": False, "aggregated_from": "per-position graph"}
    return Graph(list(nodes.values()), edges, meta)


def from_scores(result: Any, *, model: Any = None) -> Graph:
    """A node-level graph from a :class:`~mechwork.patching.PatchResult`.

    Every cell becomes a node (heads as ``a{L}.h{H}``, MLP outputs as ``m{L}``, the embeddings as ``input``,
    other sites by their short name; ``@{pos}`` for per-position cells) with an edge to the ``logits`` node whose
    weight is the cell's score (its total effect on the metric, kind ``total``). Influence pruning then keeps the
    cells carrying a given share of the total |effect|; :meth:`Graph.faithfulness` re-runs the kept cells with
    :func:`mechwork.patching.faithfulness`.
    """
    if not hasattr(result, "nodes") or not hasattr(result, "scores"):
        raise DataError(f"from_scores needs a mechwork.patching.PatchResult, got {type(result).__name__}")
    n_layers = int(result.info.get("n_layers", 0)) or (max((x.layer for x in result.nodes()), default=0) + 1)
    if model is not None:
        n_layers = int(model.cfg.n_layers)
    nodes: list[GraphNode] = []
    edges: list[GraphEdge] = []
    seen: set[str] = set()
    for cell in result.nodes():
        if math.isnan(cell.score):
            continue
        nid = _cell_id(cell)
        if nid in seen:
            raise DataError(f"two cells of the result map to node {nid!r}")
        seen.add(nid)
        kind = "head" if cell.kind == "z" and cell.head is not None else "mlp" if cell.kind == "mlp_out" else "site"
        layer = cell.layer if cell.layer >= 0 else -1
        nodes.append(GraphNode(nid, kind, layer, cell.head, cell.pos, cell.site, float(cell.score), label=str(cell)))
        edges.append(GraphEdge(nid, "logits", float(cell.score), "total"))
    if not nodes:
        raise DataError("the patch result has no finite scores: nothing to build a graph from")
    nodes.append(GraphNode("logits", "logits", n_layers, None, None, "", float(result.gap), label="metric"))
    meta = {
        "model": str(result.info.get("model", "?")),
        "backend": result.info.get("backend"),
        "n_layers": n_layers,
        "method": result.method,
        "level": "node",
        "per": result.per,
        "direction": result.direction,
        "task": result.info.get("task"),
        "metric": f"{result.info.get('task') or 'task'} metric",
        "n_prompts": result.info.get("n_prompts"),
        "clean": result.clean,
        "corrupted": result.corrupted,
        "cost": result.cost,
        "sites": list(result.sites),
        "universe_nodes": [[c.site, c.head, c.pos] for c in result.nodes()],
        "prompt": "",
        "prompt_tokens": [str(x).split(" ", 1)[-1] for x in result.labels.get("pos", [])],
    }
    if model is not None:
        meta["n_heads"] = int(model.cfg.n_heads)
        meta["d_vocab"] = int(model.cfg.d_vocab)
    return Graph(nodes, edges, meta)


def _cell_id(cell: Any) -> str:
    if cell.kind == "z" and cell.head is not None:
        base = f"a{cell.layer}.h{cell.head}"
    elif cell.kind == "mlp_out":
        base = f"m{cell.layer}"
    elif cell.kind == "embed":
        base = "input"
    else:
        base = cell.alias or cell.site
        if cell.head is not None:
            base += f".h{cell.head}"
    return base if cell.pos is None else f"{base}@{cell.pos}"


__all__ = ["edge_graph", "from_scores", "metadata", "str_tokens", "top_tokens"]
