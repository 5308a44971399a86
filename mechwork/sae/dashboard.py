"""Latents rendered as text (terminal) and as a self-contained HTML dashboard (no JavaScript, no CDN).

Every token string and tag is HTML-escaped: token strings come from tokenizers and may contain ``<``, ``&``
or quotes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.io import atomic_write_text
from .latents import LatentScan


def _summary(scan: LatentScan, latent: int, tags: dict[int, dict[str, Any]], freq: Any) -> str:
    line = f"latent {latent}: fires on {float(freq[latent]):.2%} of {scan.n_tokens:,} tokens"
    t = tags.get(latent)
    if t:
        line += f"; best tag {t['tag']} (precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f})"
    return line


def render_text(scan: LatentScan, latents: Sequence[int], *, n: int = 5, left: int = 12, right: int = 3) -> str:
    """Top contexts of ``latents`` as plain text; the top token is wrapped in ``[[ ]]`` with its value."""
    tags = {r["latent"]: r for r in scan.tag_table()}
    freq = scan.freq()
    lines = []
    for j in latents:
        lines.append(_summary(scan, j, tags, freq))
        ctxs = scan.contexts(j, n, left=left, right=right)
        if not ctxs:
            lines.append("  (never fires on these tokens)")
        for c in ctxs:
            toks = [f"[[{t}]]" if i == c["target"] else t for i, t in enumerate(c["tokens"])]
            tag = f"  <{c['tag']}>" if c["tag"] else ""
            lines.append(f"  {c['value']:8.3f}  {' '.join(toks)}{tag}")
        lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} td.l{text-align:left}
.ctx{font-family:ui-monospace,monospace;font-size:.9em;margin:2px 0;white-space:nowrap}
.ctx span{padding:1px 2px;border-radius:2px} .top{outline:1px solid #c40}
.val{display:inline-block;width:6em;color:#666}
"""


def _tok(t: str, a: float, peak: float, top: bool) -> str:
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, a / peak))
    cls = ' class="top"' if top else ""
    return (
        f'<span{cls} style="background:rgba(255,120,0,{alpha:.2f})" title="{a:.3f}">{html.escape(t, quote=True)}</span>'
    )


def render_html(
    scan: LatentScan,
    latents: Sequence[int],
    *,
    title: str = "SAE latents",
    n: int = 8,
    left: int = 12,
    right: int = 3,
    info: dict[str, Any] | None = None,
) -> str:
    """A self-contained HTML page: a summary table and the top contexts of each latent, tokens shaded by activation."""
    tags = {r["latent"]: r for r in scan.tag_table()}
    freq = scan.freq()
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if info:
        parts.append("<p>" + " &middot; ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in info.items()) + "</p>")
    parts.append(
        "<table><tr><th>latent</th><th>frequency</th><th>best tag</th><th>precision</th><th>recall</th><th>F1</th></tr>"
    )
    for j in latents:
        t = tags.get(j, {})
        parts.append(
            f"<tr><td><a href='#l{j}'>{j}</a></td><td>{float(freq[j]):.3%}</td><td class='l'>{esc(t.get('tag', '-'))}</td>"
            + "".join(f"<td>{t[k]:.2f}</td>" if k in t else "<td>-</td>" for k in ("precision", "recall", "f1"))
            + "</tr>"
        )
    parts.append("</table>")
    for j in latents:
        parts.append(f"<h2 id='l{j}'>{esc(_summary(scan, j, tags, freq))}</h2>")
        ctxs = scan.contexts(j, n, left=left, right=right)
        if not ctxs:
            parts.append("<p>(never fires on these tokens)</p>")
        for c in ctxs:
            peak = max(c["acts"]) if c["acts"] else 0.0
            toks = "".join(_tok(t, a, peak, i == c["target"]) for i, (t, a) in enumerate(zip(c["tokens"], c["acts"])))
            tag = f" <small>{esc(c['tag'])}</small>" if c["tag"] else ""
            parts.append(f"<div class='ctx'><span class='val'>{c['value']:.3f}</span>{toks}{tag}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, scan: LatentScan, latents: Sequence[int], **kw: Any) -> Path:
    """Write :func:`render_html` to ``path`` atomically."""
    path = Path(path)
    atomic_write_text(path, render_html(scan, latents, **kw))
    return path


def pick_latents(scan: LatentScan, n: int = 10) -> list[int]:
    """Latents worth a first look: best tag F1 when tags are known, else the most frequent."""
    table = scan.tag_table()
    if table:
        return [r["latent"] for r in sorted(table, key=lambda r: -r["f1"])[:n]]
    freq = scan.freq()
    return [int(i) for i in freq.argsort(descending=True)[:n] if freq[i] > 0]
