"""The dashboard's JSON document, built with whole-table tensor operations (16k latents in seconds).

Layout (compact; the page script reads it):

* ``strings``: display strings of every token id used; contexts and logit tables refer to them by index;
* ``index``: one array per column (``freq``, ``max``, ``label``, ``level``, ``f1``, ``p``, ``r``, ``special``,
  ``tokens``, ``evidence``);
* ``latents[j] = [top, samples, hist, quantiles, logits]`` with ``top`` a list of contexts
  ``[value, token indices (-1 outside the window), activation levels, tag]``, ``samples`` the same plus a
  quantile band index, ``hist = [first edge, edge ratio, counts]``, ``logits = [[ids, values] x 3]``.

Activation levels are one character per token (``LEVELS``: 36 levels of the latent's maximum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

LEVELS = "0123456789abcdefghijklmnopqrstuvwxyz"
BANDS = 4


def round3(t: Tensor) -> list[Any]:
    """Values rounded to 3 significant digits, as Python floats whose repr is short (``None`` for NaN/inf)."""
    x = t.double()
    ok = torch.isfinite(x) & (x != 0)
    d = torch.where(ok, 2 - torch.floor(torch.log10(x.abs().clamp_min(1e-300))), torch.zeros_like(x))
    up = d >= 0
    pos = torch.pow(10.0, d.clamp_min(0))
    neg = torch.pow(10.0, (-d).clamp_min(0))
    r = torch.where(up, torch.round(x * pos) / pos, torch.round(x / neg) * neg)
    r = torch.where(ok, r, torch.where(torch.isfinite(x), torch.zeros_like(x), torch.full_like(x, torch.nan)))
    return [None if v != v else v for v in r.tolist()]


def _rows(flat: list[Any], n: int) -> list[list[Any]]:
    return [flat[i : i + n] for i in range(0, len(flat), n)]


def _levels(acts: Tensor, peak: Tensor) -> list[str]:
    """Activation levels of every context as strings: ``acts [d, k, L]`` scaled by ``peak [d]``."""
    n = len(LEVELS) - 1
    q = (acts.clamp_min(0) * (n / peak.clamp_min(1e-30))[:, None, None] + 0.5).floor().clamp(0, n).to(torch.uint8)
    q = torch.where(acts > 0, q, torch.zeros_like(q))
    table = torch.tensor(list(LEVELS.encode()), dtype=torch.uint8)
    raw = table[q.long()].numpy().tobytes().decode()
    L = acts.shape[2]
    return [raw[i : i + L] for i in range(0, len(raw), L)]


def _table_rows(stats: Any, table: Any, index_of: Tensor, order: Tensor | None = None) -> tuple[list[Any], ...]:
    key, val, tok, act, tag = table.key, table.value, table.tokens.long(), table.acts, table.tag
    if order is not None:
        key, val, tag = key.gather(1, order), val.gather(1, order), tag.gather(1, order)
        tok = tok.gather(1, order[:, :, None].expand_as(tok))
        act = act.gather(1, order[:, :, None].expand_as(act))
    mapped = torch.where(tok >= 0, index_of[tok.clamp_min(0)], torch.full_like(tok, -1))
    return (
        (key > -torch.inf).sum(1).tolist(),
        round3(val.reshape(-1)),
        mapped.reshape(-1, tok.shape[2]).tolist(),
        _levels(act, stats.max),
        tag.reshape(-1).tolist(),
    )


def _hists(stats: Any) -> list[Any]:
    out = []
    for j in range(stats.d_sae):
        edges, counts = stats.histogram(j)
        out.append([edges[0], edges[1] / edges[0], counts] if counts else None)
    firsts = round3(torch.tensor([h[0] if h else 0.0 for h in out]))
    return [None if h is None else [f, h[1], h[2]] for h, f in zip(out, firsts)]


def latents_payload(stats: Any) -> tuple[list[str], list[Any], list[str]]:
    """``(strings, latents, top tokens column)`` of the document."""
    from ..latents.stats import QUANTILES
    from .style import show_token

    ids = [stats.top.tokens.reshape(-1), stats.sample.tokens.reshape(-1)]
    L = stats.logits
    pairs = []
    if L is not None:
        pairs = [(L.up_ids, L.up_vals), (L.down_ids, L.down_vals)]
        if L.emb_ids is not None:
            pairs.append((L.emb_ids, L.emb_vals))
        ids += [p[0].reshape(-1) for p in pairs]
    used = torch.unique(torch.cat([i.long() for i in ids]))
    used = used[used >= 0]
    index_of = torch.full((int(used.max()) + 1 if used.numel() else 1,), -1, dtype=torch.long)
    index_of[used] = torch.arange(used.numel())
    strings = [show_token(s) for s in stats.strings(used.tolist())]

    d, K = stats.d_sae, stats.top.k
    t_n, t_v, t_tok, t_act, t_tag = _table_rows(stats, stats.top, index_of)
    order = torch.argsort(
        stats.sample.value.masked_fill(stats.sample.key == -torch.inf, -torch.inf), 1, descending=True
    )
    s_n, s_v, s_tok, s_act, s_tag = _table_rows(stats, stats.sample, index_of, order)
    cuts = stats._cuts(tuple(i / BANDS for i in range(BANDS + 1)))[:, 1:-1].float()
    s_val = stats.sample.value.gather(1, order)
    band = (s_val[:, :, None] > cuts[:, None, :]).sum(-1).reshape(-1).tolist()
    quant = _rows(round3(stats.quantiles(QUANTILES).reshape(-1)), len(QUANTILES))
    hists = _hists(stats)
    logit_rows = [(index_of[i.long()].tolist(), _rows(round3(v.reshape(-1)), v.shape[1])) for i, v in pairs]
    centre = stats.left
    R = stats.sample.k
    latents, tok_col = [], []
    for j in range(d):
        a = j * K
        top = [[t_v[a + s], t_tok[a + s], t_act[a + s], t_tag[a + s]] for s in range(t_n[j])]
        b = j * R
        smp = [[s_v[b + s], s_tok[b + s], s_act[b + s], s_tag[b + s], band[b + s]] for s in range(s_n[j])]
        centres = list(dict.fromkeys(c[1][centre] for c in top))[:3]
        tok_col.append(" ".join(repr(strings[i]) for i in centres))
        logits = [[ix[j], vals[j]] for ix, vals in logit_rows] or None
        latents.append([top, smp, hists[j], quant[j], logits])
    return strings, latents, tok_col
