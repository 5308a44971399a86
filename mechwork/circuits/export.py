"""Writing and reading graphs: Neuronpedia JSON, node-link JSON, GraphML (networkx), DOT text, HTML.

GraphML cannot hold ``None`` or lists (networkx raises on ``None``, METHODS.md 6.4): missing values are left
out, token lists are stored as JSON strings and the metadata as one JSON string graph attribute. Parallel edges
(a sender into a head's q, k and v inputs) make every networkx form a ``MultiDiGraph`` keyed by the input kind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, DataError
from ..core.io import atomic_path, atomic_write_json, atomic_write_text, read_json
from .graph import Graph, GraphEdge, GraphNode

FORMATS = ("neuronpedia", "node-link", "graphml", "dot", "html")
_EXT = {".json": "neuronpedia", ".graphml": "graphml", ".dot": "dot", ".gv": "dot", ".html": "html", ".htm": "html"}


def _format(path: Path, format: str | None) -> str:
    if format is None:
        fmt = _EXT.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(f"cannot tell the format of {path.name!r}; pass format= one of {', '.join(FORMATS)}")
        return fmt
    fmt = {"nodelink": "node-link", "node_link": "node-link", "json": "neuronpedia", "gv": "dot"}.get(format, format)
    if fmt not in FORMATS:
        import difflib

        close = difflib.get_close_matches(str(format), FORMATS, n=2)
        raise ConfigError(
            f"unknown graph format {format!r}; use one of {', '.join(FORMATS)}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
        )
    return fmt


def save(graph: Graph, path: str | Path, format: str | None = None) -> Path:
    """Write ``graph`` to ``path`` atomically in ``format`` (default from the extension, ``.json`` = Neuronpedia)."""
    path = Path(path)
    fmt = _format(path, format)
    if fmt == "neuronpedia":
        from .neuronpedia import to_neuronpedia

        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-") or "graph"
        atomic_write_json(path, to_neuronpedia(graph, slug))
    elif fmt == "node-link":
        import networkx as nx

        atomic_write_json(path, nx.node_link_data(to_networkx(graph), edges="links"))
    elif fmt == "graphml":
        import networkx as nx

        with atomic_path(path) as tmp:
            nx.write_graphml(to_networkx(graph, graphml=True), str(tmp))
    elif fmt == "dot":
        _write_text(path, to_dot(graph))
    else:
        from .html import render

        _write_text(path, render(graph))
    return path


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def to_networkx(graph: Graph, *, graphml: bool = False) -> Any:
    """A ``networkx.MultiDiGraph``: node attributes from :class:`GraphNode`, edges keyed by input kind."""
    import networkx as nx

    G = nx.MultiDiGraph()
    G.graph["mechwork"] = json.dumps(graph.metadata, default=str) if graphml else graph.metadata
    for n in graph.nodes:
        attrs = n.to_dict()
        attrs.pop("id")
        if graphml:
            attrs["top_tokens"] = json.dumps(attrs["top_tokens"])
            attrs = {k: v for k, v in attrs.items() if v is not None}
        G.add_node(n.id, **attrs)
    for e in graph.edges:
        G.add_edge(e.src, e.dst, key=e.kind, weight=float(e.weight), kind=e.kind)
    return G


def from_networkx(G: Any, *, source: str = "<graph>") -> Graph:
    meta = G.graph.get("mechwork", {})
    if isinstance(meta, str):
        meta = json.loads(meta)
    nodes = []
    for nid, attrs in G.nodes(data=True):
        a = dict(attrs)
        if isinstance(a.get("top_tokens"), str):
            a["top_tokens"] = json.loads(a["top_tokens"])
        if "kind" not in a or "layer" not in a:
            raise DataError(f"{source}: node {nid!r} has no kind/layer: not a mechwork graph")
        nodes.append(GraphNode.from_dict({**a, "id": str(nid)}))
    edges = [GraphEdge(str(u), str(v), float(d["weight"]), str(d.get("kind", ""))) for u, v, d in G.edges(data=True)]
    return Graph(nodes, edges, dict(meta))


def _dot_id(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    """DOT text (graphviz not needed to write it): layers bottom to top, edges blue (+) / red (-), width by |w|."""
    wmax = max((abs(e.weight) for e in graph.edges), default=1.0) or 1.0
    lines = [
        f"// {graph!r}".replace("\n", " "),
        "digraph circuit {",
        "  rankdir=BT;",
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f4f4", fontname="Helvetica"];',
    ]
    for n in graph.nodes:
        label = _dot_id(n.id if not n.label or n.label == n.id else f"{n.id}: {n.label}")
        lines.append(f"  {_dot_id(n.id)} [label={label}];")
    ranks: dict[int, list[str]] = {}
    for n in graph.nodes:
        ranks.setdefault(n.layer, []).append(n.id)
    for ids in ranks.values():
        lines.append("  { rank=same; " + " ".join(_dot_id(i) for i in ids) + " }")
    for e in graph.edges:
        color = "#2060c0" if e.weight >= 0 else "#c03020"
        width = 0.5 + 4.5 * abs(e.weight) / wmax
        attrs = f'color="{color}", penwidth={width:.2f}, tooltip={_dot_id(f"{e.id} {e.weight:+.4g}")}'
        if e.kind in ("q", "k", "v"):
            attrs += f', label="{e.kind}"'
        lines.append(f"  {_dot_id(e.src)} -> {_dot_id(e.dst)} [{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def load(path: str | Path, *, model: Any = None) -> Graph:
    """Read a Neuronpedia or node-link JSON graph (or GraphML); with ``model``, check the graph belongs to it."""
    path = Path(path)
    if path.suffix.lower() == ".graphml":
        import networkx as nx

        try:
            graph = from_networkx(nx.read_graphml(str(path)), source=str(path))
        except Exception as e:  # noqa: BLE001 - parse errors of any kind: name the file
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: not a readable GraphML graph ({type(e).__name__}: {e})") from e
    else:
        d = read_json(path)
        if isinstance(d, dict) and {"metadata", "nodes", "links"} <= d.keys():
            from .neuronpedia import from_neuronpedia

            graph = from_neuronpedia(d, source=str(path))
        elif isinstance(d, dict) and {"nodes", "links", "directed"} <= d.keys():
            import networkx as nx

            try:
                G = nx.node_link_graph(d, edges="links")
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{path}: malformed node-link graph ({type(e).__name__}: {e})") from e
            graph = from_networkx(G, source=str(path))
        else:
            keys = sorted(d)[:6] if isinstance(d, dict) else type(d).__name__
            raise DataError(
                f"{path}: not a graph file (expected Neuronpedia JSON with metadata/nodes/links or node-link JSON; "
                f"found {keys})"
            )
    if model is not None:
        check_against(graph, model, source=str(path))
    return graph


def check_against(graph: Graph, model: Any, *, source: str = "graph") -> None:
    """Raise if ``graph`` was not made for ``model``'s architecture (layers, heads, node ids)."""
    cfg = model.cfg
    meta = graph.metadata
    spec = getattr(model, "mechwork_spec", None) or type(model).__name__
    for key, val in (("n_layers", int(cfg.n_layers)), ("n_heads", int(cfg.n_heads))):
        if key in meta and int(meta[key]) != val:
            raise DataError(
                f"{source}: graph of model {meta.get('model')!r} has {key}={meta[key]}, but {spec!r} has {val}"
            )
    H, N = int(cfg.n_heads), int(cfg.n_layers)
    for n in graph.nodes:
        head = re.fullmatch(r"a(\d+)\.h(\d+)(@\d+)?", n.id)
        mlp = re.fullmatch(r"m(\d+)(@\d+)?", n.id)
        bad = (
            (n.kind == "head" and not (head and int(head[1]) == n.layer and int(head[2]) == n.index))
            or (n.kind == "mlp" and not (mlp and int(mlp[1]) == n.layer))
            or (n.kind == "head" and not (0 <= n.layer < N and n.index is not None and 0 <= n.index < H))
            or (n.kind == "mlp" and not 0 <= n.layer < N)
            or (n.kind in ("latent", "error") and not (0 <= n.layer < N and n.site in model.hook_dict))
        )
        if bad:
            raise DataError(f"{source}: node {n.id!r} does not exist in {spec!r} ({N} layers, {H} heads)")


def summary(graph: Graph, n: int = 12) -> str:
    """A terminal table: what the graph is, its size, pruning, top edges and nodes."""
    m = graph.metadata
    lines = [
        repr(graph),
        f"  model {m.get('model')}  task {m.get('task')}  metric {m.get('metric')}  method {m.get('method')}",
        f"  prompt {m.get('prompt', '')!r}",
    ]
    if "clean" in m:
        lines.append(f"  clean {m['clean']:.4f}" + (f"  corrupted {m['corrupted']:.4f}" if "corrupted" in m else ""))
    if m.get("pruning"):
        p = m["pruning"]
        lines.append(
            f"  pruned ({p.get('rule')}): {p.get('n_edges')} of {p.get('n_edges_before')} edges "
            f"({100 * p.get('edge_fraction', 0):.1f}%), {p.get('n_nodes')} of {p.get('n_nodes_before')} nodes"
        )
    if m.get("faithfulness") is not None:
        lines.append(f"  faithfulness {m['faithfulness']:.3f} ({m.get('faithfulness_ablation', 'corrupt')} ablation)")
    lines.append(f"  {'edge':<34} {'weight':>10}")
    for e in graph.top_edges(n):
        lines.append(f"  {e.id:<34} {e.weight:>+10.4f}")
    kinds: dict[str, int] = {}
    for x in graph.nodes:
        kinds[x.kind] = kinds.get(x.kind, 0) + 1
    lines.append("  nodes: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
    return "\n".join(lines)


__all__ = ["save", "load", "to_networkx", "from_networkx", "to_dot", "summary", "check_against", "FORMATS"]
