"""``Graph``: a circuit as weighted nodes and edges, with the provenance needed to re-run or export it.

Node ids (the EAP-IG naming, METHODS.md 6.2, extended): ``input`` (token + position embeddings), ``a{L}.h{H}``
(attention head), ``m{L}`` (MLP), ``logits`` (the metric read from the logits); per-position nodes carry
``@{pos}``; SAE latents are ``{site}:{latent}@{pos}`` and their reconstruction errors ``{site}:err@{pos}``;
token embeddings in latent graphs ``tok@{pos}``. Edges are ``{src}->{dst}`` with the receiving input as
``kind`` (``q``, ``k``, ``v`` for the three inputs of a head, ``mlp``, ``logits``, ``latent``, or ``total`` for
node-level graphs, where each node's edge to the logits carries its total effect).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DataError

NODE_KINDS = ("input", "head", "mlp", "logits", "latent", "error", "token", "site")


@dataclass
class GraphNode:
    """One node.

    Attributes
    ----------
    id : str
        Unique id (see the module docstring).
    kind : str
        ``input``, ``head``, ``mlp``, ``logits``, ``latent``, ``error``, ``token`` or ``site`` (another
        patched site of a node-level graph).
    layer : int
        Block index; -1 for the input/tokens, ``n_layers`` for the logits.
    index : int or None
        Head index (heads), latent index (latents), token id (tokens).
    pos : int or None
        Token position for per-position nodes.
    site : str
        The hook name the node lives at (``blocks.1.attn.hook_z`` ...), or ``""``.
    score : float
        Node score: the sum of its outgoing edge weights (edge graphs), its patching score (node graphs), or
        its direct attribution to the metric (latent graphs).
    activation : float or None
        Latent activation (latent graphs).
    influence : float or None
        Influence on the logits (set by :meth:`Graph.compute_influence`).
    label : str
        A human label ("clerp"): ground-truth tag of a latent, the token of an embedding.
    top_tokens : list of str
        The node's output direction projected on the unembedding: its top tokens.
    """

    id: str
    kind: str
    layer: int
    index: int | None = None
    pos: int | None = None
    site: str = ""
    score: float = 0.0
    activation: float | None = None
    influence: float | None = None
    label: str = ""
    top_tokens: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphNode:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as e:
            raise DataError(f"malformed graph node {d!r}: {e}") from e


@dataclass
class GraphEdge:
    """``src -> dst`` through ``dst``'s input ``kind``, with a signed ``weight``."""

    src: str
    dst: str
    weight: float
    kind: str = ""

    @property
    def id(self) -> str:
        return f"{self.src}->{self.dst}" + (f"<{self.kind}>" if self.kind in ("q", "k", "v") else "")


@dataclass
class Graph:
    """A circuit graph.

    Attributes
    ----------
    nodes : list of GraphNode
    edges : list of GraphEdge
    metadata : dict
        ``model`` (spec), ``n_layers``, ``n_heads``, ``d_vocab``, ``method``, ``metric``, ``task``, ``level``
        (``node`` / ``edge`` / ``latent``), ``prompt``, ``prompt_tokens``, ``n_prompts``, ``clean`` and
        ``corrupted`` metric, ``cost`` (forwards, backwards, seconds), ``pruning`` (after :meth:`prune`) and
        method settings.
    """

    nodes: list[GraphNode]
    edges: list[GraphEdge]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.id in self._index:
                raise DataError(f"duplicate node id {n.id!r} in graph")
            self._index[n.id] = i
        for e in self.edges:
            for end in (e.src, e.dst):
                if end not in self._index:
                    raise DataError(f"edge {e.id} refers to unknown node {end!r}")

    # --- access ---------------------------------------------------------------------------------------
    def node(self, node_id: str) -> GraphNode:
        """The node with id ``node_id`` (a clear error, with close ids, when there is none)."""
        if node_id not in self._index:
            import difflib

            close = difflib.get_close_matches(node_id, list(self._index), n=4)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise DataError(f"graph has no node {node_id!r} ({len(self.nodes)} nodes{hint})")
        return self.nodes[self._index[node_id]]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    @property
    def level(self) -> str:
        return str(self.metadata.get("level", "edge"))

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def weights(self) -> torch.Tensor:
        return torch.tensor([e.weight for e in self.edges], dtype=torch.float64)

    def top_edges(self, n: int = 10, *, absolute: bool = True) -> list[GraphEdge]:
        """The ``n`` edges with the largest (absolute) weights."""
        key = (lambda e: abs(e.weight)) if absolute else (lambda e: e.weight)
        return sorted(self.edges, key=key, reverse=True)[: max(int(n), 0)]

    def top_nodes(self, n: int = 10, *, by: str = "score") -> list[GraphNode]:
        """The ``n`` nodes with the largest ``|score|`` (or ``influence``)."""
        if by == "influence":
            self.compute_influence()
            return sorted(self.nodes, key=lambda x: -(x.influence or 0.0))[:n]
        return sorted(self.nodes, key=lambda x: -abs(x.score))[:n]

    def edge_dict(self) -> dict[str, float]:
        """``edge id -> weight``."""
        return {e.id: e.weight for e in self.edges}

    def subgraph(self, edges: Iterable[GraphEdge], *, keep: Iterable[str] = (), note: dict | None = None) -> Graph:
        """A graph with only ``edges`` and the nodes they touch (plus ``keep``), same metadata (+ ``note``)."""
        edges = list(edges)
        used = {e.src for e in edges} | {e.dst for e in edges} | set(keep)
        nodes = [replace(n) for n in self.nodes if n.id in used]
        meta = dict(self.metadata)
        if note:
            meta.update(note)
        return Graph(nodes, [replace(e) for e in edges], meta)

    def copy(self) -> Graph:
        return self.subgraph(self.edges, keep=[n.id for n in self.nodes])

    def equals(self, other: Graph, *, tol: float = 1e-6) -> bool:
        """Same nodes (ids, kinds, layers, indices, positions, labels) and edges (ids, weights within ``tol``)."""
        if {n.id for n in self.nodes} != {n.id for n in other.nodes}:
            return False
        for n in self.nodes:
            m = other.node(n.id)
            if (n.kind, n.layer, n.index, n.pos, n.site, n.label) != (m.kind, m.layer, m.index, m.pos, m.site, m.label):
                return False
            if not _close(n.score, m.score, tol):
                return False
        a, b = self.edge_dict(), other.edge_dict()
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)

    # --- operations (implemented in sibling modules) --------------------------------------------------
    def compute_influence(self) -> torch.Tensor:
        """Influence of every node on the logits (METHODS.md 6.1), stored in ``node.influence``."""
        from .prune import influence

        return influence(self)

    def prune(
        self,
        *,
        influence: float | None = None,
        edge_influence: float = 0.98,
        threshold: float | None = None,
        top_n: int | None = None,
    ) -> Graph:
        """A pruned copy; exactly one of ``influence``, ``threshold``, ``top_n`` (see :func:`~.prune.prune`)."""
        from .prune import prune

        return prune(self, influence=influence, edge_influence=edge_influence, threshold=threshold, top_n=top_n)

    def faithfulness(self, model: Any, batch: Any, metric: Any = None, **kwargs: Any) -> Any:
        """Faithfulness of this graph as a circuit (see :func:`~.faithful.faithfulness`)."""
        from .faithful import faithfulness

        return faithfulness(self, model, batch, metric, **kwargs)

    def save(self, path: str | Path, format: str | None = None) -> Path:
        """Write the graph: ``neuronpedia`` (default for .json), ``node-link``, ``graphml``, ``dot``, ``html``."""
        from .export import save

        return save(self, path, format)

    @classmethod
    def load(cls, path: str | Path, *, model: Any = None) -> Graph:
        """Read a graph written by :meth:`save` (Neuronpedia or node-link JSON); with ``model``, check it fits."""
        from .export import load

        return load(path, model=model)

    @classmethod
    def from_scores(cls, result: Any, **kwargs: Any) -> Graph:
        """A node-level graph from a :class:`~mechwork.patching.PatchResult` (see :func:`~.build.from_scores`)."""
        from .build import from_scores

        return from_scores(result, **kwargs)

    def aggregate(self) -> Graph:
        """Sum a per-position graph over positions (see :func:`~.build.aggregate`)."""
        from .build import aggregate

        return aggregate(self)

    def plot(self, **kwargs: Any) -> Any:
        """A plotly figure: layers bottom to top, positions/heads left to right, edges by signed weight."""
        from .html import figure

        return figure(self, **kwargs)

    def to_html(self, **kwargs: Any) -> str:
        """The self-contained interactive view (no CDN)."""
        from .html import render

        return render(self, **kwargs)

    def summary(self) -> str:
        """A text table: counts, metric, top edges and nodes."""
        from .export import summary

        return summary(self)

    # --- display --------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"Graph({m.get('level', 'edge')}, {m.get('method', '?')}, model={m.get('model', '?')}, "
            f"{self.n_nodes} nodes, {self.n_edges} edges"
            + (
                f", pruned by {m['pruning'].get('rule')}: {m['pruning'].get('n_edges')}/{m['pruning'].get('n_edges_before')} edges"
                if m.get("pruning")
                else ""
            )
            + ")"
        )

    def _repr_html_(self) -> str:
        m = self.metadata
        rows = "".join(
            f"<tr><td>{html.escape(e.id)}</td><td style='text-align:right'>{e.weight:+.4g}</td></tr>"
            for e in self.top_edges(8)
        )
        title = html.escape(f"{m.get('model', '?')} · {m.get('task', '')} · {m.get('method', '')} · {self.level}")
        return (
            f"<div style='font-family:sans-serif;font-size:13px'><b>Graph</b> {title}<br>"
            f"{self.n_nodes} nodes, {self.n_edges} edges; clean {_fmt(m.get('clean'))}, corrupted "
            f"{_fmt(m.get('corrupted'))}<table>{rows}</table></div>"
        )


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "?"


def _close(a: float, b: float, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


__all__ = ["Graph", "GraphNode", "GraphEdge", "NODE_KINDS"]
