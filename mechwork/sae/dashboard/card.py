"""Static HTML of one latent's card (Jupyter ``_repr_html_``) and of a :class:`LatentStats` summary.

No JavaScript: the card renders in any notebook front end, trusted or not. Every token string, tag and label
goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from typing import Any

from ..latents.card import LatentCard
from .style import CSS, LEVEL_CLASS, show_token

esc = html.escape


def _ctx_html(c: dict[str, Any], peak: float) -> str:
    own = any(t[:1].isspace() for t in c["tokens"])
    parts = []
    for i, (t, a) in enumerate(zip(c["tokens"], c["acts"])):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, a / peak))
        cls = ' class="t"' if i == c["target"] else ""
        sep = "" if own or i == 0 else " "
        parts.append(
            f'{sep}<span{cls} style="background:rgba(255,110,0,{alpha:.2f})" title="{a:.3g}">'
            f"{esc(show_token(t), quote=True)}</span>"
        )
    tag = f' <span class="tag">{esc(c["tag"])}</span>' if c.get("tag") else ""
    return f'<div class="ctx"><span class="v">{c["value"]:.3g}</span>{"".join(parts)}{tag}</div>'


def histogram_svg(edges: list[float], counts: list[int], *, width: int = 300, height: int = 90) -> str:
    """Bars of a log-binned histogram as inline SVG (x: activation on a log axis, y: count)."""
    if not counts:
        return '<p class="muted">no firings</p>'
    top = max(counts) or 1
    w = width / len(counts)
    bars = "".join(
        f'<rect x="{i * w:.1f}" y="{height - height * c / top:.1f}" width="{max(w - 1, 0.5):.1f}" '
        f'height="{height * c / top:.1f}"><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg class="hist" width="{width}" height="{height + 14}" viewBox="0 0 {width} {height + 14}">{bars}'
        f'<text x="0" y="{height + 12}">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height + 12}" text-anchor="end">{edges[-1]:.3g}</text></svg>'
    )


def _logits_html(card: LatentCard) -> str:
    if card.logits is None:
        return f'<p class="muted">logit effects: {esc(card.logits_reason or "unavailable")}</p>'
    cols = []
    for name, title in (("promoted", "promotes"), ("suppressed", "suppresses"), ("embedding", "embedding ~")):
        rows = card.logits.get(name)
        if rows is None:
            continue
        body = "".join(f"<tr><td class='tok'>{esc(show_token(t))}</td><td>{v:+.3g}</td></tr>" for t, v in rows)
        cols.append(f"<table class='lg'><tr><th colspan=2>{title}</th></tr>{body}</table>")
    return f"<div class='row'>{''.join(cols)}</div>"


def card_body(card: LatentCard) -> str:
    lab = card.label
    q = " ".join(f"p{round(k * 100)}={v:.3g}" for k, v in card.quantiles.items() if not math.isnan(v))
    special = f" &middot; {card.special} firings on special tokens left out" if card.special else ""
    parts = [
        f"<h3>latent {card.latent} <span class='lab {LEVEL_CLASS.get(lab.level, '')}'>{esc(lab.text)}</span></h3>",
        f"<p class='ev'>{esc(lab.describe())}</p>",
        f"<p class='st'>fires on {card.freq:.3%} of {card.n_tokens:,} tokens &middot; max {card.max:.3g} &middot; "
        f"mean {card.mean:.3g}{special}<br>{esc(q)}</p>",
        f"<div class='row'><div>{histogram_svg(*card.histogram)}</div>{_logits_html(card)}</div>",
        "<h4>top activations</h4>",
    ]
    peak = card.max
    parts += [_ctx_html(c, peak) for c in card.contexts] or ["<p class='muted'>never fires on these tokens</p>"]
    if card.samples:
        parts.append("<h4>samples by quantile band</h4>")
        for b in card.samples:
            parts.append(
                f"<p class='band'>quantiles {b['q'][0]:.2f}-{b['q'][1]:.2f} "
                f"(activations {b['lo']:.3g}-{b['hi']:.3g})</p>"
            )
            parts += [_ctx_html(c, peak) for c in b["items"]]
    return "".join(parts)


def card_html(card: LatentCard) -> str:
    """A self-contained HTML card of one latent."""
    return f"<div class='mwl'><style>{CSS}</style>{card_body(card)}</div>"


def _f1(row: dict[str, Any]) -> str:
    return "" if row["f1"] is None else f"{row['f1']:.2f}"


def stats_html(stats: Any, n: int = 12) -> str:
    """A compact summary of a :class:`LatentStats`: the latents worth a first look."""
    rows = {r["latent"]: r for r in stats.table()}
    body = "".join(
        f"<tr><td>{j}</td><td>{rows[j]['freq']:.3%}</td><td>{rows[j]['max']:.3g}</td>"
        f"<td class='l'>{esc(rows[j]['label'])}</td><td>{_f1(rows[j])}</td></tr>"
        for j in stats.best(n)
    )
    return (
        f"<div class='mwl'><style>{CSS}</style><p>{esc(repr(stats))}; the {n} latents worth a first look "
        f"(<code>stats[j]</code> shows one, <code>stats.to_html(path)</code> all):</p>"
        f"<table class='ix'><tr><th>latent</th><th>freq</th><th>max</th><th>label</th><th>F1</th></tr>{body}</table></div>"
    )
