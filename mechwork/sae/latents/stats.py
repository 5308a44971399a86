"""``latent_stats``: every latent of an SAE described from one streamed pass over tokens.

Sources: an :class:`~mechwork.cache.ActivationStore` (no model needed: its rows and token windows are read in
order), or any token source run through ``model`` (texts, token tensors, files, tasks, generators, a
``Corpus``; ``None`` = held-out text of the generated language). On the generated language with a shipped
model, tokens carry ground-truth tags and labels are scored on held-out documents (see ``labels``).
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

from ...core.errors import ConfigError, DataError
from .accumulate import _EDGES, N_BINS, Accumulator, bin_edges
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


@torch.no_grad()
def latent_stats(
    sae: Any,
    source: Any = None,
    *,
    model: Any = None,
    site: str | None = None,
    n_tokens: int = 50_000,
    batch_size: int = 32,
    include_special: bool = False,
    top: int = 12,
    samples: int = 16,
    left: int = 10,
    right: int = 3,
    logit_tokens: int = 10,
    tokenizer: Any = None,
    seed: int = 0,
    progress: bool = False,
) -> LatentStats:
    """Describe every latent of ``sae`` from one pass over ``n_tokens`` tokens.

    Parameters
    ----------
    sae : SAE
    source : ActivationStore, token source, or None
        ``None``: held-out text of the generated language (needs a shipped ``model``; tokens then carry tags).
        An ActivationStore needs no model. Anything else (texts, token tensors, files, tasks, generators,
        ``Corpus``, ``"corpus"``, ``"task:NAME"``) goes through :func:`mechwork.data.sources.token_source` with
        ``model``'s tokenizer, one document per row (long documents split at the context length).
    model : HookedTransformer or TransformerBridge, optional
        Needed for token sources; gives the tokenizer and the unembedding for logit effects.
    site : str, optional
        Default: the SAE's own site.
    n_tokens : int
        Tokens to count (special tokens not included).
    batch_size : int
        Documents (or activation-store windows) per forward pass and encoding batch.
    include_special : bool
        Count BOS/EOS/padding/CLS/SEP tokens too (by default they are left out: their residual stream is a
        near-constant vector that many latents fire on, which says nothing about text).
    top, samples : int
        Top-activating contexts kept per latent; firing events sampled uniformly per latent (shown by quantile
        band). Both are de-duplicated: identical shown contexts count once.
    left, right : int
        Context tokens shown before and after the activating token.
    logit_tokens : int
        Promoted / suppressed tokens kept per latent (0 skips logit effects).
    tokenizer : optional
        Overrides the model's (or the store model's) tokenizer for reading token ids.
    seed : int
        Seed of the generated held-out text and of the uniform samples.

    Returns
    -------
    LatentStats
    """
    from ..evaluate import _site_for
    from .batches import (
        corpus_chunks,
        is_word_tokenizer,
        source_chunks,
        special_ids,
        store_chunks,
        token_strings,
        tokenizer_for,
    )
    from .logits import logit_effects

    if n_tokens < 1:
        raise ConfigError(f"n_tokens must be positive, got {n_tokens}")
    if top < 1 or samples < 1 or left < 0 or right < 0:
        raise ConfigError("top and samples must be >= 1, left and right >= 0")
    is_store = hasattr(source, "sites") and hasattr(source, "context") and hasattr(source, "docs")
    tok = tokenizer_for(model, source if is_store else None, tokenizer)
    specials = special_ids(tok)
    acc = Accumulator(sae.d_sae, top=top, samples=samples, left=left, right=right, seed=seed)
    tag_ids: dict[str, int] = {}
    meta: dict[str, Any] = {"include_special": include_special, "site": site or sae.site}
    if is_store:
        it = store_chunks(
            sae,
            source,
            site,
            n_tokens=n_tokens,
            batch_size=batch_size,
            specials=specials,
            include_special=include_special,
        )
        meta["source"] = f"activation store ({getattr(source, 'model_spec', '?')})"
    else:
        if model is None:
            raise DataError("latent_stats() needs a model for a token source (or pass an ActivationStore)")
        s = _site_for(model, sae, site, strict=False)
        meta["site"] = s.name
        if source is None and not is_word_tokenizer(tok):
            raise DataError(
                "source=None means the generated language, which only the shipped models read; pass texts, "
                "a token tensor, a file or an ActivationStore for this model"
            )
        if (source is None or type(source).__name__ == "Corpus") and is_word_tokenizer(tok):
            from ...data import Corpus

            corpus = Corpus(10_000 + seed, split="all") if source is None else source
            it = corpus_chunks(
                sae,
                model,
                s.name,
                corpus,
                n_tokens=n_tokens,
                batch_size=batch_size,
                specials=specials,
                include_special=include_special,
                tag_ids=tag_ids,
            )
            meta["source"] = f"generated corpus (seed {corpus.seed}, split {corpus.split}), tagged"
        else:
            it = source_chunks(
                sae,
                model,
                s.name,
                source,
                n_tokens=n_tokens,
                batch_size=batch_size,
                seed=seed,
                specials=specials,
                include_special=include_special,
            )
            meta["source"] = type(source).__name__
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tokens, unit="tok", desc="latent stats")
    for chunk in it:
        before = acc.n_tokens
        acc.update(chunk, len(tag_ids))
        if bar is not None:
            bar.update(min(acc.n_tokens, n_tokens) - min(before, n_tokens))
        if acc.n_tokens >= n_tokens:
            break
    if bar is not None:
        bar.close()
    if acc.n_tokens == 0:
        raise DataError("the source gave no tokens to count (all special, or empty)")
    acc.top.finish()
    acc.sample.finish()
    names = [t for t, _ in sorted(tag_ids.items(), key=lambda kv: kv[1])] or None
    effects, reason = (None, "logit_tokens=0")
    if logit_tokens > 0:
        effects, reason = logit_effects(model, sae.W_dec, meta["site"] if model is not None else None, logit_tokens)
    meta.update(model=getattr(model, "mechwork_spec", None) or getattr(source, "model_spec", None))
    return LatentStats(
        d_sae=sae.d_sae,
        n_tokens=acc.n_tokens,
        n_special=acc.n_special,
        count=acc.count,
        total=acc.total,
        max=acc.max,
        min=acc.min,
        special=acc.special,
        hist=acc.hist,
        top=acc.top,
        sample=acc.sample,
        left=left,
        right=right,
        strings=token_strings(tok),
        tag_names=names,
        tag_counts=acc.tag_counts if names else None,
        tag_totals=acc.tag_totals if names else None,
        n_fold=(acc.n_fold[0], acc.n_fold[1]),
        logits=effects,
        logits_reason=reason,
        meta=meta,
    )
