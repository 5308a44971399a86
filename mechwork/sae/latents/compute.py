"""``latent_stats``: every latent of an SAE described from one streamed pass over tokens.

Sources: an :class:`~mechwork.cache.ActivationStore` (no model needed: its rows and token windows are read in
order), or any token source run through ``model`` (texts, token tensors, files, tasks, generators, a
``Corpus``; ``None`` = held-out text of the generated language). On the generated language with a shipped
model, tokens carry ground-truth tags and labels are scored on held-out documents (see ``labels``).
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.errors import ConfigError, DataError
from .accumulate import Accumulator
from .stats import LatentStats


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
