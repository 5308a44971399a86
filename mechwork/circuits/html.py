"""The interactive view: one self-contained HTML string (inline SVG + a few lines of inline JavaScript, no
CDN), which works offline in a browser and inside Jupyter. Layers run bottom to top, positions (or heads)
left to right; edge width and colour follow the signed weight (blue +, red -); hovering a node shows its id,
score, influence and top tokens in embedding space; clicking it highlights its edges; a slider hides weak
edges. Every string that comes from the model (tokens, labels) is escaped with ``html.escape``; the node data
is embedded as JSON with ``<``, ``>`` and ``&`` written as unicode escapes, so a token such as ``</script>``
cannot close the script.
"""

from __future__ import annotations

import html
import json
from typing import Any

from .graph import Graph, GraphNode

_W, _ROW, _PAD = 110, 90, 60


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """``node id -> (x, y)`` in pixels: rows by layer (input at the bottom), columns by position then index."""
    rows: dict[float, list[GraphNode]] = {}
    for n in graph.nodes:
        r = float(n.layer) + (0.5 if n.kind == "mlp" else 0.0)
        rows.setdefault(r, []).append(n)
    order = sorted(rows)
    width = max(len(v) for v in rows.values())
    pos: dict[str, tuple[float, float]] = {}
    for k, r in enumerate(order):
        ns = sorted(
            rows[r], key=lambda n: (n.pos if n.pos is not None else -1, n.index if n.index is not None else -1, n.id)
        )
        offset = (width - len(ns)) * _W / 2
        for i, n in enumerate(ns):
            pos[n.id] = (_PAD + offset + i * _W, _PAD + (len(order) - 1 - k) * _ROW)
    return pos


def _js_json(obj: Any) -> str:
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(graph: Graph, *, title: str | None = None, max_edges: int = 3000) -> str:
    """The self-contained interactive HTML page of ``graph`` (the ``max_edges`` strongest edges drawn)."""
    pos = layout(graph)
    width = max((x for x, _ in pos.values()), default=0) + _PAD + _W
    height = max((y for _, y in pos.values()), default=0) + _PAD + 20
    edges = graph.top_edges(max_edges)
    wmax = max((abs(e.weight) for e in edges), default=1.0) or 1.0
    esc = html.escape
    parts = []
    for e in edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        color = "#2060c0" if e.weight >= 0 else "#c03020"
        w = 0.4 + 5.6 * abs(e.weight) / wmax
        dx = {"q": -12, "k": 0, "v": 12}.get(e.kind, 0)
        parts.append(
            f'<path class="e" data-s="{esc(e.src)}" data-t="{esc(e.dst)}" data-w="{abs(e.weight) / wmax:.6f}" '
            f'd="M{x1:.1f},{y1:.1f} C{x1:.1f},{(y1 + y2) / 2:.1f} {x2 + dx:.1f},{(y1 + y2) / 2:.1f} {x2 + dx:.1f},{y2 + 14:.1f}" '
            f'stroke="{color}" stroke-width="{w:.2f}" fill="none" opacity="0.55">'
            f"<title>{esc(e.id)} {e.weight:+.4g}</title></path>"
        )
    smax = max((abs(n.score) for n in graph.nodes), default=1.0) or 1.0
    data = {}
    for n in graph.nodes:
        x, y = pos[n.id]
        fill = {"head": "#fde3a7", "mlp": "#c8e6c9", "logits": "#e1bee7", "latent": "#bbdefb", "error": "#eeeeee"}.get(
            n.kind, "#ffffff"
        )
        r = 10 + 8 * min(1.0, abs(n.score) / smax)
        tops = ", ".join(n.top_tokens[:8])
        tip = f"{n.id} ({n.kind}) score {n.score:+.4g}" + (f"; top tokens: {tops}" if tops else "")
        parts.append(
            f'<g class="n" data-id="{esc(n.id)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" '
            f'stroke="#555"/><text x="{x:.1f}" y="{y + r + 12:.1f}" text-anchor="middle">{esc(_short(n))}</text>'
            f"<title>{esc(tip)}</title></g>"
        )
        data[n.id] = {
            "id": n.id,
            "kind": n.kind,
            "layer": n.layer,
            "pos": n.pos,
            "score": n.score,
            "influence": n.influence,
            "activation": n.activation,
            "label": n.label,
            "top_tokens": n.top_tokens[:10],
        }
    m = graph.metadata
    head = esc(title or f"{m.get('model', '?')} · {m.get('task') or ''} · {m.get('method', '')} · {graph.level} graph")
    info = esc(
        f"{graph.n_nodes} nodes, {graph.n_edges} edges; metric {m.get('metric', '')}; prompt: {m.get('prompt', '')}"
    )
    return _PAGE.format(
        title=head,
        info=info,
        width=int(width),
        height=int(height),
        svg="\n".join(parts),
        data=_js_json(data),
    )


def _short(n: GraphNode) -> str:
    if n.kind == "latent":
        return f"{n.index}@{n.pos}"
    return n.id if len(n.id) <= 14 else n.id[:13] + "…"


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
.mw-graph {{ font-family: Helvetica, Arial, sans-serif; font-size: 12px; }}
.mw-graph svg text {{ font-size: 10px; fill: #333; pointer-events: none; }}
.mw-graph .n {{ cursor: pointer; }}
.mw-graph .dim {{ opacity: 0.08 !important; }}
.mw-graph #mw-panel {{ min-height: 3em; padding: 4px; background: #fafafa; border: 1px solid #ddd; }}
</style></head>
<body><div class="mw-graph">
<h3>{title}</h3><div>{info}</div>
<div>edge threshold <input id="mw-thr" type="range" min="0" max="1" step="0.01" value="0"> <span id="mw-thr-v">0</span>
 (fraction of the largest |weight|); click a node to highlight its edges.</div>
<div id="mw-panel">hover a node</div>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
{svg}
</svg>
<script type="application/json" id="mw-data">{data}</script>
<script>
(function() {{
  var root = document.currentScript.parentNode;
  var data = JSON.parse(root.querySelector('#mw-data').textContent);
  var panel = root.querySelector('#mw-panel');
  var edges = root.querySelectorAll('path.e');
  function esc(s) {{ var d = document.createElement('div'); d.textContent = String(s); return d.innerHTML; }}
  function show(id) {{
    var n = data[id]; if (!n) return;
    panel.innerHTML = '<b>' + esc(n.id) + '</b> (' + esc(n.kind) + ', layer ' + esc(n.layer) +
      (n.pos === null ? '' : ', pos ' + esc(n.pos)) + ') score ' + esc(Number(n.score).toPrecision(4)) +
      (n.influence === null ? '' : ', influence ' + esc(Number(n.influence).toPrecision(3))) +
      (n.activation === null ? '' : ', activation ' + esc(Number(n.activation).toPrecision(3))) +
      (n.label ? '<br>' + esc(n.label) : '') +
      (n.top_tokens.length ? '<br>top tokens: ' + n.top_tokens.map(esc).join(' | ') : '');
  }}
  var picked = null;
  root.querySelectorAll('g.n').forEach(function(g) {{
    var id = g.getAttribute('data-id');
    g.addEventListener('mouseenter', function() {{ show(id); }});
    g.addEventListener('click', function() {{
      picked = (picked === id) ? null : id;
      edges.forEach(function(e) {{
        var on = picked === null || e.getAttribute('data-s') === picked || e.getAttribute('data-t') === picked;
        e.classList.toggle('dim', !on);
      }});
    }});
  }});
  var thr = root.querySelector('#mw-thr');
  thr.addEventListener('input', function() {{
    root.querySelector('#mw-thr-v').textContent = thr.value;
    edges.forEach(function(e) {{
      e.style.display = parseFloat(e.getAttribute('data-w')) >= parseFloat(thr.value) ? '' : 'none';
    }});
  }});
}})();
</script>
</div></body></html>
"""


def figure(graph: Graph, *, max_edges: int = 400) -> Any:
    """A plotly figure of the graph (same layout as the HTML view), described through mechwork.viz."""
    from ..viz import Line, lines

    pos = layout(graph)
    edges = graph.top_edges(max_edges)
    wmax = max((abs(e.weight) for e in edges), default=1.0) or 1.0
    series = [
        Line(
            y=[-pos[e.src][1], -pos[e.dst][1]],
            x=[pos[e.src][0], pos[e.dst][0]],
            color="#2060c0" if e.weight >= 0 else "#c03020",
            width=0.5 + 5 * abs(e.weight) / wmax,
            hover=[f"{e.id} {e.weight:+.4g}"] * 2,
        )
        for e in edges
    ]
    series.append(
        Line(
            y=[-pos[n.id][1] for n in graph.nodes],
            x=[pos[n.id][0] for n in graph.nodes],
            mode="markers",
            name="nodes",
            color="#555555",
            hover=[f"{n.id} score {n.score:+.4g} top: {', '.join(n.top_tokens[:5])}" for n in graph.nodes],
        )
    )
    m = graph.metadata
    fig = lines(
        [series],
        title=f"{m.get('model', '?')} {m.get('task') or ''} {m.get('method', '')} ({graph.n_edges} edges)",
        subtitle="layers bottom to top; blue +, red -; hover for ids, scores and top tokens",
        height=max(300, 90 * (1 + len({n.layer for n in graph.nodes}))),
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(showlegend=False)
    return fig


__all__ = ["render", "figure", "layout"]
