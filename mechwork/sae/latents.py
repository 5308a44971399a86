"""What latents mean: top-activating contexts and the best-matching ground-truth tag per latent.

:func:`scan` encodes many tokens once and keeps their sparse codes with the token windows they came from
(and, on the generated language, every token's ground-truth tag such as ``ioi:IO`` or ``induction:second``).
A :class:`LatentScan` then answers, for any latent: how often it fires, its top-activating contexts, and
which tag it matches best (precision = P(tag | latent fires), recall = P(latent fires | tag), best by F1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError, SiteError
from ..core.hooks import capture
from .evaluate import _site_for, token_batches
from .model import SAE

MAX_CODES = 64  # ReLU / JumpReLU SAEs: keep at most this many active latents per token


@dataclass
class LatentScan:
    """Sparse codes of ``n`` tokens with their context windows.

    Attributes
    ----------
    windows : LongTensor [n_windows, L]
        Token ids of the windows (documents or store windows), padded with -1.
    loc : LongTensor [n, 2]
        ``(window, position)`` of every scanned token.
    vals, idx : Tensor [n, kk]
        Active latents of every token (value 0 in unused slots).
    tags : list of str or None
        Ground-truth tag of every scanned token (generated language only).
    decode : callable
        Token ids -> strings.
    d_sae : int
    """

    windows: Tensor
    loc: Tensor
    vals: Tensor
    idx: Tensor
    tags: list[str] | None
    decode: Callable[[Sequence[int]], list[str]]
    d_sae: int

    @property
    def n_tokens(self) -> int:
        return int(self.loc.shape[0])

    def freq(self) -> Tensor:
        """Firing frequency of every latent, ``[d_sae]``."""
        active = self.vals > 0
        return torch.bincount(self.idx[active], minlength=self.d_sae).double() / max(1, self.n_tokens)

    def _check(self, latent: int) -> int:
        if not 0 <= int(latent) < self.d_sae:
            raise ConfigError(
                f"latent {latent} is out of range: the SAE has {self.d_sae} latents (0..{self.d_sae - 1})"
            )
        return int(latent)

    def activations(self, latent: int) -> Tensor:
        """The latent's activation on every scanned token, ``[n]``."""
        latent = self._check(latent)
        return (self.vals * (self.idx == latent)).sum(1)

    def contexts(self, latent: int, n: int = 8, *, left: int = 12, right: int = 3) -> list[dict[str, Any]]:
        """Top-``n`` activating tokens of ``latent`` with ``left``/``right`` tokens of context.

        Each item: ``value``, ``tokens`` (strings), ``acts`` (the latent on each shown token), ``target``
        (index of the top token in ``tokens``), ``tag`` (ground truth of the top token, if known).
        """
        acts = self.activations(latent)
        top = torch.topk(acts, min(n, int((acts > 0).sum()))) if int((acts > 0).sum()) else None
        if top is None:
            return []
        table = {(int(w), int(p)): i for i, (w, p) in enumerate(self.loc.tolist())}
        out = []
        for v, row in zip(top.values.tolist(), top.indices.tolist()):
            w, p = self.loc[row].tolist()
            win = self.windows[w]
            lo, hi = max(0, p - left), min(int((win >= 0).sum()), p + right + 1)
            ids = win[lo:hi].tolist()
            shown = [float(acts[table[(w, q)]]) if (w, q) in table else 0.0 for q in range(lo, hi)]
            out.append(
                {
                    "value": v,
                    "tokens": self.decode(ids),
                    "acts": shown,
                    "target": p - lo,
                    "tag": self.tags[row] if self.tags else None,
                }
            )
        return out

    def tag_table(self) -> list[dict[str, Any]]:
        """Best-matching tag of every latent that fires (empty without tags), sorted by latent."""
        if not self.tags:
            return []
        names = sorted(set(self.tags))
        tag_id = torch.tensor([names.index(t) for t in self.tags])
        n_tags = len(names)
        active = self.vals > 0
        rows = torch.arange(self.n_tokens)[:, None].expand_as(self.idx)[active]
        flat = self.idx[active] * n_tags + tag_id[rows]
        counts = torch.bincount(flat, minlength=self.d_sae * n_tags).reshape(self.d_sae, n_tags).double()
        fired = counts.sum(1)
        per_tag = torch.bincount(tag_id, minlength=n_tags).double()
        prec = counts / fired[:, None].clamp_min(1)
        rec = counts / per_tag[None].clamp_min(1)
        f1 = 2 * prec * rec / (prec + rec).clamp_min(1e-12)
        best = f1.argmax(1)
        out = []
        for j in torch.nonzero(fired > 0).flatten().tolist():
            t = int(best[j])
            out.append(
                {
                    "latent": j,
                    "tag": names[t],
                    "precision": float(prec[j, t]),
                    "recall": float(rec[j, t]),
                    "f1": float(f1[j, t]),
                    "freq": float(fired[j] / self.n_tokens),
                }
            )
        return out

    def tag_coverage(self) -> list[dict[str, Any]]:
        """For every tag, the latent that matches it best (by F1): how well each ground-truth factor is captured."""
        table = self.tag_table()
        best: dict[str, dict[str, Any]] = {}
        for r in table:
            if r["tag"] not in best or r["f1"] > best[r["tag"]]["f1"]:
                best[r["tag"]] = r
        return [best[t] for t in sorted(best)]


def _decoder_for(model: Any, store: Any = None) -> Callable[[Sequence[int]], list[str]]:
    tok = getattr(model, "tokenizer", None) if model is not None else None
    if tok is not None:
        table = tok.convert_ids_to_tokens(list(range(int(model.cfg.d_vocab))))
        return lambda ids: [str(table[i]) for i in ids]
    spec = getattr(store, "model_spec", None)
    from ..models.zoo import ENTRIES

    if spec in ENTRIES:
        from ..data.tokenizer import decode_ids

        return lambda ids: decode_ids(list(ids))
    return lambda ids: [f"#{i}" for i in ids]


def _codes(sae: SAE, x: Tensor, k: int | None) -> tuple[Tensor, Tensor]:
    x = x.to(sae.W_dec.device, sae.W_dec.dtype)
    if sae.activation == "topk":
        vals, idx = sae.encode_topk(x, k=k)
    else:
        f = sae.encode(x).reshape(x.shape[0], -1)
        vals, idx = f.topk(min(MAX_CODES, sae.d_sae), dim=-1)
    return vals.cpu(), idx.cpu()


@torch.no_grad()
def scan(
    sae: SAE,
    source: Any = None,
    *,
    model: Any = None,
    site: str | None = None,
    n_tokens: int = 20000,
    batch_size: int = 64,
    seed: int = 0,
    k: int | None = None,
) -> LatentScan:
    """Encode ``n_tokens`` tokens and keep their codes, windows and (generated language) tags.

    Parameters
    ----------
    source : ActivationStore, Corpus, token tensor, texts, or None
        An ActivationStore needs no model (its activations and token windows are used). Anything else is run
        through ``model``; ``None`` means held-out generated text, whose tags are then known.
    """
    if model is None:
        if not (hasattr(source, "window") and hasattr(source, "sites")):
            raise DataError("scan() needs a model, or an ActivationStore as the source")
        name = site or sae.site
        if name is None:
            raise SiteError("pass site= (the SAE does not record its site)")
        name = source.site_name(name) if hasattr(source, "site_name") else name
        ctx, total = int(source.context), int(source.n_tokens)
        n_win = max(1, min(n_tokens, total) // ctx)
        n = min(n_win * ctx, total)
        data = source[name]
        parts = [_codes(sae, data[i : min(i + 8192, n)].reshape(-1, sae.d_in), k) for i in range(0, n, 8192)]
        rows = torch.arange(n)
        windows = torch.full((n_win * ctx,), -1, dtype=torch.long)
        windows[:n] = source.tokens[:n]
        return LatentScan(
            windows.reshape(n_win, ctx),
            torch.stack([rows // ctx, rows % ctx], 1),
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            None,
            _decoder_for(None, source),
            sae.d_sae,
        )
    s = _site_for(model, sae, site, strict=False)
    wins, locs, vals, idxs, tags = [], [], [], [], []
    have_tags = True
    for tokens, mask, docs in token_batches(model, source, n_tokens=n_tokens, batch_size=batch_size, seed=seed):
        acts = capture(model, tokens, [s.name])[s.name]
        keep = mask.clone()
        v, i = _codes(sae, acts[keep].reshape(-1, sae.d_in), k)
        base = sum(w.shape[0] for w in wins)
        nz = keep.nonzero()
        locs.append(torch.stack([nz[:, 0] + base, nz[:, 1]], 1))
        padded = tokens.clone()
        padded[~(mask | _eos_positions(mask))] = -1
        wins.append(padded)
        vals.append(v)
        idxs.append(i)
        if docs is None:
            have_tags = False
        else:
            for b, p in nz.tolist():
                tags.append("bos" if p == 0 else docs[b].tags[p - 1])
    width = max(w.shape[1] for w in wins)
    windows = torch.cat([torch.nn.functional.pad(w, (0, width - w.shape[1]), value=-1) for w in wins])
    return LatentScan(
        windows,
        torch.cat(locs),
        torch.cat(vals),
        torch.cat(idxs),
        tags if have_tags else None,
        _decoder_for(model),
        sae.d_sae,
    )


def _eos_positions(mask: Tensor) -> Tensor:
    """The position right after the last loss-mask position of each row (the EOS of a document)."""
    out = torch.zeros_like(mask)
    last = mask.long().cumsum(1).argmax(1)
    rows = torch.arange(mask.shape[0])
    ok = mask.any(1) & (last + 1 < mask.shape[1])
    out[rows[ok], last[ok] + 1] = True
    return out
