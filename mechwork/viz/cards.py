"""Compact HTML summary cards for result objects in notebooks (``_repr_html_``): a title, a few facts, an
optional small table; every string escaped, never a tensor dump."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = (
    "font-family:system-ui,sans-serif;font-size:13px;border:1px solid #ccc;border-radius:6px;"
    "padding:8px 12px;display:inline-block;max-width:100%"
)


def fmt(value: Any) -> str:
    """A short display string for a fact (floats to 4 significant digits, tensors by shape only)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, str)):
        return f"{type(value).__name__}{list(shape)}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return ", ".join(str(v) for v in value[:6]) + f", ... ({len(value)})"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def card(
    title: str,
    facts: Mapping[str, Any],
    *,
    table: tuple[str, str, Sequence[str]] | tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
) -> str:
    """HTML of a summary card.

    ``table`` is ``(header_a, header_b, rows_html)`` with rows already escaped (``<tr>...</tr>``), or
    ``(headers, rows)`` with plain values (escaped here).
    """
    items = "".join(
        f"<tr><td style='color:#666;padding-right:12px'>{html.escape(str(k))}</td><td>{html.escape(fmt(v))}</td></tr>"
        for k, v in facts.items()
        if v is not None
    )
    out = f"<div style='{_STYLE}'><b>{html.escape(title)}</b><table style='margin-top:4px'>{items}</table>"
    if table is not None:
        if len(table) == 3:
            a, b, rows = table  # type: ignore[misc]
            head = f"<tr><th style='text-align:left'>{html.escape(a)}</th><th style='text-align:left'>{html.escape(b)}</th></tr>"
            body = "".join(rows)
        else:
            headers, plain = table  # type: ignore[misc]
            head = (
                "<tr>" + "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in headers) + "</tr>"
            )
            body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in plain)
        out += f"<table style='margin-top:6px;border-top:1px solid #eee'>{head}{body}</table>"
    return out + "</div>"


def store_card(store: Any) -> str:
    """Card of an :class:`~mechwork.cache.ActivationStore`: where, model, tokens, sites with their widths."""
    m = store.manifest
    facts = {
        "where": str(store.path) if store.path else "memory",
        "model": m.model_spec,
        "tokens": f"{store.n_tokens:,}",
        "context": m.context,
        "packing": m.packing,
        "dtype": m.dtype,
        "source": m.source,
        "complete": m.complete,
    }
    rows = [(e.alias or e.name, e.name, "x".join(str(x) for x in e.shape)) for e in m.sites[:12]]
    return card("ActivationStore", facts, table=(("site", "hook", "per token"), rows))


def eraser_card(eraser: Any) -> str:
    """Card of an :class:`~mechwork.erasure.Eraser`."""
    c = eraser.config
    facts = {
        "method": eraser.method,
        "site": c.site,
        "model": c.model,
        "task": c.task,
        "d": eraser.d,
        "rank": eraser.rank,
        "affine": eraser.bias is not None,
        "classes": list(c.classes) if c.classes else None,
        "fitted on": f"{c.n_samples:,} rows" if c.n_samples else None,
        "fit seconds": c.fit_seconds,
    }
    return card("Eraser", facts)


def sae_facts(sae: Any) -> dict[str, Any]:
    cfg = sae.cfg
    return {
        "architecture": getattr(sae, "activation", None),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": getattr(cfg, "k", None),
        "site": sae.meta.get("site"),
        "model": sae.meta.get("model"),
        "trained tokens": sae.meta.get("tokens"),
    }


def sae_card(sae: Any) -> str:
    """Card of an SAE."""
    return card(type(sae).__name__, sae_facts(sae))


def train_result_card(result: Any) -> str:
    """Card of an SAE :class:`~mechwork.sae.TrainResult`: the run and each SAE's last logged metrics."""
    facts = {
        "SAEs": len(result.saes),
        "steps": result.steps,
        "tokens": f"{result.tokens:,}",
        "seconds": result.seconds,
        "stopped early": result.stopped_early or None,
        "folder": str(result.out) if result.out else None,
    }
    last: dict[str, dict[str, Any]] = {}
    for rec in result.history:
        last[str(rec.get("sae"))] = rec
    rows = [
        (name, rec.get("loss"), rec.get("fvu"), rec.get("l0"), rec.get("dead_fraction"))
        for name, rec in list(last.items())[:12]
    ]
    table = (("SAE", "loss", "FVU", "L0", "dead"), rows) if rows else None
    return card("TrainResult", facts, table=table)
