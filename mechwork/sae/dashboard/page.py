"""The offline dashboard: one self-contained HTML file describing every latent of an SAE.

The page embeds one JSON document (token strings stored once in a table, activations quantised to 36 levels
(one character) of the latent's maximum, floats to 3 significant digits) and a small inline script that renders a searchable, sortable,
paged index of all latents and, on click (or ``#<latent>`` in the address), that latent's card: top contexts with
token-level highlighting, samples by quantile band, activation histogram, logit effects. Nothing is fetched:
no CDN, no network. Cards are built on demand with ``textContent`` (never ``innerHTML`` with data) and the JSON
is escaped so that ``</script>`` inside a token cannot end the data block.

Size bound (tested): at most ``BYTES_PER_LATENT`` bytes per latent plus ``BYTES_FIXED``, with the default
12 top contexts and 16 samples of 14 tokens per latent.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from ...core.io import atomic_write_text
from .script import SCRIPT
from .style import CSS, show_token

LEVELS = "0123456789abcdefghijklmnopqrstuvwxyz"  # activation of a context token, in 36 levels of the latent's max
BYTES_PER_LATENT = 3072
BYTES_FIXED = 64 * 1024


def _r(x: float) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return float(f"{x:.3g}")


class _Strings:
    """Token strings stored once; contexts refer to them by index."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.index: dict[int, int] = {}

    def __call__(self, ids: list[int]) -> list[int]:
        out = []
        for i in ids:
            k = self.index.get(i)
            if k is None:
                k = self.index[i] = len(self.index)
            out.append(k)
        return out

    def table(self) -> list[str]:
        ids = sorted(self.index, key=self.index.__getitem__)
        return [show_token(s) for s in self.stats.strings(ids)]


def _ctx(c: dict[str, Any], peak: float, strings: _Strings, tag_ix: dict[str, int]) -> list[Any]:
    scale = 0.0 if peak <= 0 else (len(LEVELS) - 1) / peak
    q = "".join(LEVELS[min(len(LEVELS) - 1, int(a * scale + 0.5))] if a > 0 else "0" for a in c["acts"])
    return [_r(c["value"]), c["target"], strings(c["ids"]), q, tag_ix.get(c["tag"], -1) if c["tag"] else -1]


def payload(stats: Any, *, title: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document the page renders from."""
    from ..latents.stats import QUANTILES

    strings = _Strings(stats)
    tag_ix = {t: i for i, t in enumerate(stats.tag_names or [])}
    rows = stats.table()
    quant = stats.quantiles(QUANTILES).tolist()
    latents, tok_col = [], []
    for j, row in enumerate(rows):
        peak = row["max"]
        ctxs = stats.contexts(j, strings=False)
        top_ids = [c["ids"][c["target"]] for c in ctxs]
        uniq = list(dict.fromkeys(top_ids))[:3]
        tok_col.append(" ".join(repr(s) for s in stats.strings(uniq)))
        bands = [
            [_r(b["lo"]), _r(b["hi"]), b["q"][0], b["q"][1], [_ctx(c, peak, strings, tag_ix) for c in b["items"]]]
            for b in stats.samples(j, strings=False)
        ]
        edges, counts = stats.histogram(j)
        hist = [_r(edges[0]), _r(edges[1] / edges[0]), counts] if counts else None
        logits = None
        if stats.logits is not None:
            L = stats.logits
            pairs = [(L.up_ids, L.up_vals), (L.down_ids, L.down_vals)]
            if L.emb_ids is not None:
                pairs.append((L.emb_ids, L.emb_vals))
            logits = [[strings(i[j].tolist()), [_r(v) for v in vals[j].tolist()]] for i, vals in pairs]
        latents.append([[_ctx(c, peak, strings, tag_ix) for c in ctxs], bands, hist, [_r(v) for v in quant[j]], logits])
    index = {
        "freq": [_r(r["freq"]) for r in rows],
        "max": [_r(r["max"]) for r in rows],
        "label": [r["label"] for r in rows],
        "level": [r["level"] for r in rows],
        "f1": [_r(r["f1"]) for r in rows],
        "p": [_r(r["precision"]) for r in rows],
        "r": [_r(r["recall"]) for r in rows],
        "special": [r["special"] for r in rows],
        "tokens": tok_col,
        "evidence": [lab.describe() for lab in stats.labels],
    }
    return {
        "title": title,
        "info": {str(k): str(v) for k, v in (info or {}).items()},
        "n_tokens": stats.n_tokens,
        "tags": bool(stats.tag_names),
        "tag_names": list(stats.tag_names or []),
        "quantiles": list(QUANTILES),
        "logits_reason": stats.logits_reason,
        "strings": strings.table(),
        "index": index,
        "latents": latents,
    }


def _json_for_html(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` survive literally."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace("\u2028", "\\u2028")


def render_dashboard(stats: Any, *, title: str = "SAE latents", info: dict[str, Any] | None = None) -> str:
    """The dashboard page as a string (see the module docstring)."""
    data = _json_for_html(payload(stats, title=title, info=info))
    t = html.escape(title)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{CSS}{PAGE_CSS}</style></head><body class='mwl'>"
        f"<h1>{t}</h1><div id='mw-info'></div>"
        "<div id='mw-bar'><input id='mw-q' type='search' placeholder='search label, tag, token or latent id'> "
        "<label><input id='mw-alive' type='checkbox' checked> hide latents that never fire</label> "
        "<span id='mw-count'></span> <button id='mw-prev'>&lt;</button><span id='mw-page'></span>"
        "<button id='mw-next'>&gt;</button></div>"
        "<div id='mw-main'><div id='mw-index'></div><div id='mw-card'><p class='muted'>click a latent</p></div></div>"
        f"<script type='application/json' id='mw-data'>{data}</script>"
        f"<script>{SCRIPT}</script></body></html>"
    )


PAGE_CSS = """
body.mwl{margin:1em 1.5em} h1{font-size:1.25em;margin:.2em 0}
#mw-bar{margin:.5em 0} #mw-q{width:22em}
#mw-main{display:flex;gap:1.5em;align-items:flex-start}
#mw-index{flex:0 0 auto;max-height:85vh;overflow:auto}
#mw-index th{cursor:pointer;position:sticky;top:0} #mw-index tr.sel{background:#fde9d9}
#mw-index td.l{max-width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#mw-index tr:hover{background:#f6f6f6;cursor:pointer}
#mw-card{flex:1 1 auto;min-width:30em;max-height:85vh;overflow:auto}
"""


def write_dashboard(
    path: str | Path, stats: Any, *, title: str | None = None, info: dict[str, Any] | None = None
) -> Path:
    """Write the dashboard of every latent of ``stats`` to ``path`` (atomically) and return the path."""
    path = Path(path)
    page = render_dashboard(stats, title=title or "SAE latents", info=info)
    atomic_write_text(path, page)
    return path
