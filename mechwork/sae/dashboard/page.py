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
from pathlib import Path
from typing import Any

import torch

from ...core.io import atomic_write_text
from .data import BANDS, latents_payload, round3
from .script import SCRIPT
from .style import CSS

BYTES_PER_LATENT = 3072
BYTES_FIXED = 64 * 1024


def payload(stats: Any, *, title: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document the page renders from (layout in :mod:`.data`)."""
    from ..latents.stats import QUANTILES

    strings, latents, tok_col = latents_payload(stats)
    rows = stats.table()

    def col(name: str) -> list[Any]:
        return round3(torch.tensor([float("nan") if r[name] is None else r[name] for r in rows]))

    index = {
        "freq": col("freq"),
        "max": col("max"),
        "label": [r["label"] for r in rows],
        "level": [r["level"] for r in rows],
        "f1": col("f1"),
        "p": col("precision"),
        "r": col("recall"),
        "special": [r["special"] for r in rows],
        "tokens": tok_col,
        "evidence": [lab.describe() for lab in stats.labels],
    }
    return {
        "title": title,
        "info": {str(k): str(v) for k, v in (info or {}).items()},
        "n_tokens": stats.n_tokens,
        "left": stats.left,
        "bands": BANDS,
        "tags": bool(stats.tag_names),
        "tag_names": list(stats.tag_names or []),
        "quantiles": list(QUANTILES),
        "logits_reason": stats.logits_reason,
        "strings": strings,
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
