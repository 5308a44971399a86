"""The result of :func:`~mechwork.sae.latents.compute.latent_stats`: every latent of an SAE, from one pass.

Per latent: frequency, quantiles and histogram (from the log-binned counts), top contexts and quantile-band
samples (from the two tables), labels (``labels``), logit effects (``logits``); ``stats[j]`` is the card.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ...core.errors import ConfigError
from .accumulate import _EDGES, N_BINS, bin_edges
from .labels import Label, tag_labels, token_labels
from .logits import LogitEffects

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass
class LatentStats:
    """Statistics of every latent of one SAE over ``n_tokens`` tokens (see :func:`latent_stats`).

    ``stats[j]`` is latent ``j``'s :class:`~mechwork.sae.latents.card.LatentCard` (renders in Jupyter);
    ``stats.to_html(path)`` writes the offline dashboard of all latents.
    """

    d_sae: int
    n_tokens: int
    n_special: int
    count: Int[Tensor, " d_sae"]
    total: Tensor
    max: Float[Tensor, " d_sae"]
    min: Float[Tensor, " d_sae"]
    special: Int[Tensor, " d_sae"]
    hist: Tensor
    top: Any
    sample: Any
    left: int
    right: int
    strings: Callable[[Sequence[int]], list[str]]
    tag_names: list[str] | None = None
    tag_counts: Tensor | None = None
    tag_totals: Tensor | None = None
    n_fold: tuple[int, int] = (0, 0)
    logits: LogitEffects | None = None
    logits_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------------------------------ per latent
    def _check(self, j: int) -> int:
        try:
            j = operator.index(j)
        except TypeError:
            raise ConfigError(f"latent index must be an integer, got {type(j).__name__}") from None
        if not 0 <= j < self.d_sae:
            raise ConfigError(f"latent {j} is out of range: the SAE has {self.d_sae} latents (0..{self.d_sae - 1})")
        return j

    def freq(self) -> Float[Tensor, " d_sae"]:
        """Firing frequency of every latent over the counted tokens."""
        return self.count.double() / max(1, self.n_tokens)

    def mean(self) -> Float[Tensor, " d_sae"]:
        """Mean activation when firing (0 for latents that never fire)."""
        return self.total / self.count.clamp_min(1)

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> Float[Tensor, "d_sae q"]:
        """Activation quantiles over firing events, read from the log-binned histogram (within ~2.2%).

        ``NaN`` for latents that never fire.
        """
        if not all(0 <= q <= 1 for q in qs):
            raise ConfigError(f"quantiles must lie in [0, 1], got {list(qs)}")
        h = self.hist.reshape(self.d_sae, N_BINS).double()
        cum = h.cumsum(1)
        n = cum[:, -1:]
        edges = bin_edges()
        out = torch.full((self.d_sae, len(qs)), torch.nan, dtype=torch.float64)
        for i, q in enumerate(qs):
            target = (q * n).clamp_min(1e-9)
            b = torch.searchsorted(cum, target).clamp_max(N_BINS - 1)
            below = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(target))
            inbin = h.gather(1, b).clamp_min(1)
            frac = ((target - below) / inbin).clamp(0, 1)
            lo, hi = edges[b].log(), edges[b + 1].log()
            v = (lo + frac * (hi - lo)).exp()
            v = torch.minimum(torch.maximum(v, self.min.double()[:, None]), self.max.double()[:, None])
            out[:, i] = v[:, 0]
        out[self.count == 0] = torch.nan
        return out

    def histogram(self, j: int, bars: int = 40) -> tuple[list[float], list[int]]:
        """Latent ``j``'s activation histogram: ``bars`` log-spaced bars between its smallest and largest value.

        Returns ``(edges, counts)`` with ``len(edges) == len(counts) + 1``.
        """
        j = self._check(j)
        h = self.hist.reshape(self.d_sae, N_BINS)[j]
        nz = h.nonzero().flatten()
        if not nz.numel():
            return [], []
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        per = max(1, -(-(hi - lo) // bars))
        hi = min(N_BINS, lo + per * -(-(hi - lo) // per))
        counts = torch.nn.functional.pad(h[lo:hi], (0, per * -(-(hi - lo) // per) - (hi - lo))).reshape(-1, per)
        edges = _EDGES[lo : lo + counts.shape[0] * per + 1 : per]
        return edges.tolist(), counts.sum(1).tolist()

    def _entries(self, table: Any, j: int, *, strings: bool = True) -> list[dict[str, Any]]:
        names = self.tag_names or []
        n = int((table.key[j] > -torch.inf).sum())
        if not n:
            return []
        ids_rows, act_rows = table.tokens[j, :n].tolist(), table.acts[j, :n].tolist()
        out = []
        for ids, acts, v, t in zip(ids_rows, act_rows, table.value[j, :n].tolist(), table.tag[j, :n].tolist()):
            a = next(i for i, x in enumerate(ids) if x >= 0)
            b = len(ids) - next(i for i, x in enumerate(reversed(ids)) if x >= 0)
            out.append(
                {
                    "value": v,
                    "tokens": self.strings(ids[a:b]) if strings else None,
                    "ids": ids[a:b],
                    "acts": acts[a:b],
                    "target": self.left - a,
                    "tag": names[t] if 0 <= t < len(names) else None,
                }
            )
        return out

    def contexts(self, j: int, *, strings: bool = True) -> list[dict[str, Any]]:
        """Top-activating contexts of latent ``j`` (de-duplicated), largest first.

        Each item: ``value``, ``tokens`` (strings), ``ids``, ``acts`` (the latent on every shown token), ``target``
        (index of the activating token in ``tokens``), ``tag`` (its ground-truth tag, if known).
        """
        return self._entries(self.top, self._check(j), strings=strings)

    def samples(self, j: int, bands: int = 4, *, strings: bool = True) -> list[dict[str, Any]]:
        """A uniform sample of latent ``j``'s firing events, split into ``bands`` quantile bands (highest first).

        Each band: ``lo``, ``hi`` (activation range), ``q`` (quantile range), ``items`` (contexts as in
        :meth:`contexts`).
        """
        j = self._check(j)
        items = sorted(self._entries(self.sample, j, strings=strings), key=lambda e: -e["value"])
        if not items:
            return []
        qs = [i / bands for i in range(bands + 1)]
        cut = self._cuts(tuple(qs))[j].tolist()
        cut[0], cut[-1] = 0.0, float("inf")
        out = []
        for b in reversed(range(bands)):
            inside = [e for e in items if cut[b] < e["value"] <= cut[b + 1] or (b == 0 and e["value"] <= cut[1])]
            if inside:
                out.append(
                    {
                        "lo": min(e["value"] for e in inside),
                        "hi": max(e["value"] for e in inside),
                        "q": (qs[b], qs[b + 1]),
                        "items": inside,
                    }
                )
        return out

    def _cuts(self, qs: tuple[float, ...]) -> Tensor:
        if qs not in self._cache:
            self._cache[qs] = self.quantiles(qs)
        return self._cache[qs]

    @functools.cached_property
    def labels(self) -> list[Label]:
        """The label of every latent (ground-truth tags where known, else a top-token summary)."""
        if self.tag_names:
            return tag_labels(self)
        return token_labels(self)

    def logit_table(self, j: int) -> dict[str, list[tuple[str, float]]] | None:
        """Latent ``j``'s top promoted / suppressed tokens and embedding neighbours (``None`` when unavailable)."""
        j = self._check(j)
        if self.logits is None:
            return None
        L = self.logits
        pairs = {"promoted": (L.up_ids, L.up_vals), "suppressed": (L.down_ids, L.down_vals)}
        if L.emb_ids is not None:
            pairs["embedding"] = (L.emb_ids, L.emb_vals)
        return {k: list(zip(self.strings(i[j].tolist()), v[j].tolist())) for k, (i, v) in pairs.items()}

    def __getitem__(self, j: int) -> Any:
        from .card import LatentCard

        return LatentCard.of(self, self._check(j))

    def __len__(self) -> int:
        return self.d_sae

    # ------------------------------------------------------------------------------------------ all latents
    def table(self) -> list[dict[str, Any]]:
        """One row per latent: ``latent``, ``freq``, ``max``, ``mean``, ``special`` (firings on special tokens
        left out), ``label``, ``level``, ``tag``, ``precision``, ``recall``, ``f1``."""
        freq, mean = self.freq().tolist(), self.mean().tolist()
        mx, sp = self.max.tolist(), self.special.tolist()
        rows = []
        for j, lab in enumerate(self.labels):
            rows.append(
                {
                    "latent": j,
                    "freq": freq[j],
                    "max": mx[j] if self.count[j] else 0.0,
                    "mean": mean[j],
                    "special": sp[j],
                    "label": lab.text,
                    "level": lab.level,
                    "tag": lab.tag,
                    "precision": lab.precision,
                    "recall": lab.recall,
                    "f1": lab.f1,
                }
            )
        return rows

    def best(self, n: int = 10) -> list[int]:
        """Latents worth a first look: best held-out F1 when tags are known, else the most frequent."""
        alive = [r for r in self.table() if r["level"] != "dead"]
        key = (lambda r: -(r["f1"] or 0.0)) if self.tag_names else (lambda r: -r["freq"])
        return [r["latent"] for r in sorted(alive, key=key)[:n]]

    def tag_table(self) -> list[dict[str, Any]]:
        """Rows of :meth:`table` for latents with a tag label (held-out scores)."""
        return [r for r in self.table() if r["tag"] is not None]

    def tag_coverage(self) -> list[dict[str, Any]]:
        """For every ground-truth tag, the latent labelled with it that scores best (held-out F1)."""
        best: dict[str, dict[str, Any]] = {}
        for r in self.tag_table():
            if r["tag"] not in best or r["f1"] > best[r["tag"]]["f1"]:
                best[r["tag"]] = r
        return [best[t] for t in sorted(best)]

    def to_html(self, path: Any, **kw: Any) -> Any:
        """Write the offline dashboard of all latents (see :func:`mechwork.sae.dashboard.write_dashboard`)."""
        from ..dashboard import write_dashboard

        return write_dashboard(path, self, **kw)

    def __repr__(self) -> str:
        alive = int((self.count > 0).sum())
        tags = f", {len(self.tag_names)} ground-truth tags" if self.tag_names else ""
        return f"LatentStats({self.d_sae} latents, {alive} fire on {self.n_tokens:,} tokens{tags})"

    def _repr_html_(self) -> str:
        from ..dashboard.card import stats_html

        return stats_html(self)
