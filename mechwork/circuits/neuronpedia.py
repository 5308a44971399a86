"""Neuronpedia / circuit-tracer attribution-graph JSON (METHODS.md 6.1) and its JSON Schema.

How mechwork's nodes map onto the format (circuit-tracer's conventions where it has the node type):

==============  ==========================  ==========================  ==============  ================
node            ``feature_type``            ``node_id``                 ``feature``     ``layer``
==============  ==========================  ==========================  ==============  ================
SAE latent      ``"sae latent"``            ``{L}_{latent}_{pos}``      Cantor(L, f)    ``str(L)``
SAE error       ``"sae reconstruction error"`` ``0_{L}_{pos}``          -1              ``str(L)``
token           ``"embedding"``             ``E_{token id}_{pos}``      pos             ``"E"``
logits/metric   ``"logit"``                 ``{N+1}_{token id}_{pos}``  token id        ``str(N+1)``
head            ``"attention head"``        ``{L}_{H}_{pos}``           H               ``str(L)``
MLP             ``"mlp"``                   ``{L}_mlp_{pos}``           null            ``str(L)``
embeddings      ``"embedding"``             ``E_{token id}_{pos}``      pos             ``"E"``
other site      ``"site"``                  ``{L}_{id}_{pos}``          null            ``str(L)``
==============  ==========================  ==========================  ==============  ================

``N`` = number of layers; ``jsNodeId`` follows the same table (``{L}_{f}-0`` for latents and heads,
``E_{tok}-{pos}``, ``L_{tok}-{pos}``). Nodes aggregated over positions (heads and MLPs of an edge graph) sit at
``ctx_idx`` = the prediction position. The logits node stands for the metric (e.g. the logit difference), drawn
as the answer token with ``is_target_logit`` true. ``influence`` is circuit-tracer's cumulative-influence rank
(smaller = more important). Links are ``{source, target, weight}`` plus ``kind`` (``q``, ``k``, ``v``, ...).
Every node and the metadata also carry a ``mechwork`` object, so a graph reloads exactly.
"""

from __future__ import annotations

import time
from typing import Any

from ..core.errors import DataError
from .graph import Graph, GraphEdge, GraphNode

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Neuronpedia / circuit-tracer attribution graph (as mechwork writes it)",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": "string", "minLength": 1},
                "scan": {"type": "string", "minLength": 1},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "prompt": {"type": "string"},
                "transcoder_list": {"type": "array"},
                "node_threshold": {"type": "number"},
                "schema_version": {"type": "integer"},
                "feature_details": {"type": "object"},
                "info": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string"},
                        "creator_name": {"type": "string"},
                        "creator_url": {"type": "string"},
                        "source_urls": {"type": "array"},
                        "generator": {"type": "object"},
                        "create_time_ms": {"type": "number"},
                    },
                },
                "generation_settings": {"type": "object"},
                "pruning_settings": {
                    "type": "object",
                    "properties": {"node_threshold": {"type": "number"}, "edge_threshold": {"type": "number"}},
                },
            },
        },
        "qParams": {
            "type": "object",
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": "string"}},
                "supernodes": {"type": "array"},
                "linkType": {"type": "string"},
                "clickedId": {"type": "string"},
                "sg_pos": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
                "properties": {
                    "node_id": {"type": "string", "minLength": 1},
                    "feature": {"type": ["integer", "null"]},
                    "layer": {"type": ["string", "integer"]},
                    "ctx_idx": {"type": "integer", "minimum": 0},
                    "feature_type": {"type": "string"},
                    "jsNodeId": {"type": "string"},
                    "clerp": {"type": "string"},
                    "influence": {"type": ["number", "null"]},
                    "activation": {"type": ["number", "null"]},
                    "token_prob": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                    "run_idx": {"type": "integer"},
                    "reverse_ctx_idx": {"type": "integer"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}

_TYPES = {
    "latent": "sae latent",
    "error": "sae reconstruction error",
    "token": "embedding",
    "input": "embedding",
    "logits": "logit",
    "head": "attention head",
    "mlp": "mlp",
    "site": "site",
}


def _cantor(a: int, b: int) -> int:
    return (a + b) * (a + b + 1) // 2 + b


def _np_node(n: GraphNode, meta: dict[str, Any], cum: float | None) -> dict[str, Any]:
    N = int(meta.get("n_layers", 0))
    ctx = n.pos if n.pos is not None else int(meta.get("target_pos", max(len(meta.get("prompt_tokens", [])) - 1, 0)))
    L = n.layer
    if n.kind == "latent":
        nid, feat, layer, js = f"{L}_{n.index}_{ctx}", _cantor(L, int(n.index or 0)), str(L), f"{L}_{n.index}-0"
    elif n.kind == "error":
        nid, feat, layer, js = f"0_{L}_{ctx}", -1, str(L), f"{L}_{ctx}-0"
    elif n.kind in ("token", "input"):
        tok = (
            n.index
            if n.index is not None
            else int(meta.get("tokens", [0] * (ctx + 1))[ctx] if meta.get("tokens") else 0)
        )
        nid, feat, layer, js = f"E_{tok}_{ctx}", ctx, "E", f"E_{tok}-{ctx}"
    elif n.kind == "logits":
        tok = n.index if n.index is not None else 0
        nid, feat, layer, js = f"{N + 1}_{tok}_{ctx}", tok, str(N + 1), f"L_{tok}-{ctx}"
    elif n.kind == "head":
        nid, feat, layer, js = f"{L}_{n.index}_{ctx}", n.index, str(L), f"{L}_{n.index}-0"
    elif n.kind == "mlp":
        nid, feat, layer, js = f"{L}_mlp_{ctx}", None, str(L), f"{L}_mlp-0"
    else:
        nid, feat, layer, js = f"{L}_{n.id}_{ctx}", None, str(L), f"{L}_{n.id}-0"
    d: dict[str, Any] = {
        "node_id": nid,
        "feature": feat,
        "layer": layer,
        "ctx_idx": int(ctx),
        "feature_type": _TYPES.get(n.kind, n.kind),
        "jsNodeId": js,
        "clerp": _clerp(n, meta),
        "influence": cum,
        "activation": n.activation,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "mechwork": n.to_dict(),
    }
    if n.kind == "logits":
        d["token_prob"] = float(meta.get("answer_prob", 0.0) or 0.0)
        d["is_target_logit"] = True
    return d


def _clerp(n: GraphNode, meta: dict[str, Any]) -> str:
    if n.kind == "logits":
        tok = meta.get("answer_token", "")
        return f'Output "{tok}" (p={float(meta.get("answer_prob", 0.0) or 0.0):.3f}) [{meta.get("metric", "metric")}]'
    if n.kind == "error":
        return f"Err: {n.site}"
    tops = ", ".join(n.top_tokens[:5])
    return n.label + (f" -> {tops}" if tops else "")


def to_neuronpedia(graph: Graph, slug: str) -> dict[str, Any]:
    """The graph as a Neuronpedia JSON dict (validated by :data:`SCHEMA`)."""
    from .prune import cumulative_rank, influence

    meta = graph.metadata
    inf = influence(graph) if graph.edges else None
    cum = cumulative_rank(inf.clamp_min(0)).tolist() if inf is not None else [None] * graph.n_nodes
    nodes = [_np_node(n, meta, c) for n, c in zip(graph.nodes, cum)]
    ids = [x["node_id"] for x in nodes]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"node ids collide in the Neuronpedia naming: {dup}")
    to_np = {n.id: x["node_id"] for n, x in zip(graph.nodes, nodes)}
    prune = meta.get("pruning") or {}
    from .. import __version__

    out_meta: dict[str, Any] = {
        "slug": slug,
        "scan": str(meta.get("model", "mechwork-model")),
        "prompt_tokens": [str(t) for t in meta.get("prompt_tokens", [])],
        "prompt": str(meta.get("prompt", "")),
        "transcoder_list": [],
        "schema_version": 1,
        "info": {
            "description": f"{meta.get('method', '')} {meta.get('level', '')} graph of {meta.get('task') or 'a task'} "
            f"({meta.get('metric', 'metric')}, {meta.get('n_prompts', '?')} prompts)",
            "creator_name": "",
            "creator_url": "",
            "source_urls": [],
            "generator": {"name": "mechwork", "version": __version__, "url": "", "email": ""},
            "create_time_ms": int(time.time() * 1000),
        },
        "generation_settings": {
            k: meta[k] for k in ("method", "level", "steps", "quadrature", "path", "n_prompts") if k in meta
        },
        "pruning_settings": {k: prune[k] for k in ("node_threshold", "edge_threshold") if k in prune},
        "mechwork": meta,
    }
    if "node_threshold" in prune:
        out_meta["node_threshold"] = prune["node_threshold"]
    return {
        "metadata": out_meta,
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [
            {"source": to_np[e.src], "target": to_np[e.dst], "weight": float(e.weight), "kind": e.kind}
            for e in graph.edges
        ],
    }


def from_neuronpedia(d: dict[str, Any], *, source: str = "<dict>") -> Graph:
    """A graph from Neuronpedia JSON: exact when mechwork wrote it, by the format's conventions otherwise."""
    try:
        nodes_in, links = d["nodes"], d["links"]
        meta = dict(d["metadata"].get("mechwork") or {})
        if not meta:
            meta = {
                "model": d["metadata"].get("scan", "?"),
                "prompt": d["metadata"].get("prompt", ""),
                "prompt_tokens": d["metadata"].get("prompt_tokens", []),
                "level": "latent",
                "method": "imported",
            }
        nodes, to_id = [], {}
        for x in nodes_in:
            if "mechwork" in x:
                n = GraphNode.from_dict(x["mechwork"])
            else:
                n = _foreign_node(x)
            nodes.append(n)
            to_id[x["node_id"]] = n.id
        edges = []
        for e in links:
            for end in (e["source"], e["target"]):
                if end not in to_id:
                    raise DataError(f"{source}: link refers to unknown node {end!r}")
            edges.append(GraphEdge(to_id[e["source"]], to_id[e["target"]], float(e["weight"]), str(e.get("kind", ""))))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{source}: malformed Neuronpedia graph ({type(e).__name__}: {e})") from e
    return Graph(nodes, edges, meta)


def _foreign_node(x: dict[str, Any]) -> GraphNode:
    ft = str(x.get("feature_type", ""))
    layer_s = str(x.get("layer", ""))
    layer = int(layer_s) if layer_s.lstrip("-").isdigit() else -1
    kind = (
        "logits"
        if ft == "logit"
        else "token"
        if ft == "embedding"
        else "error"
        if "error" in ft
        else "head"
        if "attention" in ft
        else "mlp"
        if ft == "mlp"
        else "latent"
    )
    feat = x.get("feature")
    return GraphNode(
        id=str(x["node_id"]),
        kind=kind,
        layer=layer,
        index=feat if isinstance(feat, int) else None,
        pos=int(x.get("ctx_idx", 0)),
        label=str(x.get("clerp", "")),
        activation=x.get("activation"),
        influence=x.get("influence"),
    )


__all__ = ["SCHEMA", "to_neuronpedia", "from_neuronpedia"]
