"""Batches for the latent-statistics pass: an activation store's rows, or a token source run through a model.

Each batch comes as a :class:`~.accumulate.Chunk` holding the SAE's sparse codes of every position, the token
ids (``-1`` on padding added for batching), which positions count (special tokens -- BOS, EOS, padding, CLS,
SEP, UNK of the tokenizer -- are left out unless ``include_special``), the fold of each position and, on the
generated language with a shipped model's word tokenizer, the ground-truth tag of each token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ...core.errors import DataError, SiteError
from ...core.hooks import capture, n_ctx
from .accumulate import Chunk

ENCODE_ROWS = 4096  # rows encoded at a time (bounds the dense code matrix of ReLU SAEs)


# ------------------------------------------------------------------------------------------------- tokenizer
def tokenizer_for(model: Any = None, store: Any = None, tokenizer: Any = None) -> Any:
    """The tokenizer to read token ids with: given, the model's, or the one of the store's model spec."""
    if tokenizer is not None:
        return getattr(tokenizer, "tokenizer", None) or tokenizer
    tok = getattr(model, "tokenizer", None) if model is not None else None
    if tok is not None:
        return tok
    spec = getattr(store, "model_spec", None)
    if spec:
        from ...models.zoo import ENTRIES

        if spec in ENTRIES:
            from ...data import get_tokenizer

            return get_tokenizer()
        from pathlib import Path

        folder = Path(str(spec)).expanduser()
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder))
    return None


def _holder(tok: Any) -> Any:
    """A model-like holder of ``tok`` for the core token helpers (which read ``model.tokenizer``)."""
    return SimpleNamespace(tokenizer=tok)


def special_ids(tok: Any) -> Int[Tensor, " n"]:
    """Ids of the tokenizer's special tokens (BOS, EOS, padding, CLS, SEP, UNK, MASK)."""
    from ...core.prompts import special_ids as core_special_ids

    return torch.tensor(sorted(core_special_ids(_holder(tok))), dtype=torch.long)


def token_strings(tok: Any) -> Callable[[Sequence[int]], list[str]]:
    """A cached id -> display string function (:func:`mechwork.core.str_tokens` per id: spaces kept)."""
    from ...core.prompts import token_str

    holder = _holder(tok)

    @functools.cache
    def one(i: int) -> str:
        return token_str(holder, i)

    return lambda ids: [one(int(i)) for i in ids]


def is_word_tokenizer(tok: Any) -> bool:
    """Whether ``tok`` is the generated language's tokenizer (then documents carry ground-truth tags)."""
    from ...core.prompts import vocab_id

    return tok is not None and vocab_id(tok) == "mechwork-toy"


# ------------------------------------------------------------------------------------------------- codes
def sparse_codes(sae: Any, x: Float[Tensor, "n d"]) -> tuple[Float[Tensor, "n kk"], Int[Tensor, "n kk"]]:
    """Exact sparse codes: ``(values, latent indices)`` holding every active latent of every row."""
    x = x.to(sae.W_dec.device, sae.W_dec.dtype)
    vals, idxs = [], []
    for i in range(0, x.shape[0], ENCODE_ROWS):
        xb = x[i : i + ENCODE_ROWS]
        if getattr(sae, "activation", None) == "topk" and callable(getattr(sae, "encode_topk", None)):
            v, j = sae.encode_topk(xb)
        else:
            f = sae.encode(xb).reshape(xb.shape[0], -1)
            kk = max(1, int((f > 0).sum(1).max()))
            v, j = f.topk(kk, dim=-1, sorted=False)
        vals.append(v.detach().float().cpu())
        idxs.append(j.cpu())
    width = max(v.shape[1] for v in vals)
    vals = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vals]
    idxs = [torch.nn.functional.pad(j, (0, width - j.shape[1])) for j in idxs]
    return torch.cat(vals), torch.cat(idxs)


def _chunk(
    sae: Any,
    acts: Tensor,
    tokens: Tensor,
    real: Tensor,
    specials: Tensor,
    include_special: bool,
    fold: Tensor,
    tags: Tensor | None,
) -> Chunk:
    b, p = tokens.shape
    vals, idx = sparse_codes(sae, acts.reshape(b * p, -1))
    is_special = torch.isin(tokens, specials) & real
    counted = real if include_special else real & ~is_special
    shown_tokens = torch.where(real, tokens, torch.full_like(tokens, -1))
    return Chunk(vals, idx, shown_tokens, counted, is_special & ~counted, fold, tags)


# ------------------------------------------------------------------------------------------------- sources
def store_chunks(
    sae: Any, store: Any, site: str | None, *, n_tokens: int, batch_size: int, specials: Tensor, include_special: bool
) -> Iterator[Chunk]:
    """Consecutive context windows of an activation store (no model needed)."""
    name = site or sae.site
    if name is None:
        raise SiteError("pass site= (the SAE does not record its site)")
    name = store.site_name(name)
    data = store[name]
    ctx, total = int(store.context), int(store.n_tokens)
    if total == 0:
        raise DataError("the activation store holds no tokens")
    have, lo = 0, 0
    while lo < total and have < n_tokens:
        n_full = min(batch_size, (total - lo) // ctx)
        hi, width = (lo + n_full * ctx, ctx) if n_full else (total, total - lo)  # whole windows, then the tail
        tokens = store.tokens[lo:hi].reshape(-1, width)
        c = _chunk(
            sae,
            data[lo:hi],
            tokens,
            torch.ones_like(tokens, dtype=torch.bool),
            specials,
            include_special,
            torch.zeros_like(tokens),
            None,
        )
        have += int(c.counted.sum())
        lo = hi
        yield c


def corpus_chunks(
    sae: Any,
    model: Any,
    site: str,
    corpus: Any,
    *,
    n_tokens: int,
    batch_size: int,
    specials: Tensor,
    include_special: bool,
    tag_ids: dict[str, int],
) -> Iterator[Chunk]:
    """Documents of the generated language (word tokenizer), each token with its ground-truth tag.

    Documents alternate between fold 0 (shown contexts, label choice) and fold 1 (held out: label scores).
    """
    from ...data import docs_to_batch

    have, n_doc = 0, 0
    while have < n_tokens:
        docs = corpus.docs(batch_size)
        tokens, _ = docs_to_batch(docs, n_ctx(model))
        b, p = tokens.shape
        real = torch.zeros(b, p, dtype=torch.bool)
        tags = torch.full((b, p), -1, dtype=torch.long)
        for i, d in enumerate(docs):
            row = ["bos", *d.tags, "eos"]
            real[i, : len(row)] = True
            tags[i, : len(row)] = torch.tensor([tag_ids.setdefault(t, len(tag_ids)) for t in row])
        fold = ((torch.arange(b) + n_doc) % 2)[:, None].expand(b, p)
        n_doc += b
        acts = capture(model, tokens, [site])[site]
        c = _chunk(sae, acts, tokens, real, specials, include_special, fold, tags)
        have += int(c.counted.sum())
        yield c


def source_chunks(
    sae: Any,
    model: Any,
    site: str,
    source: Any,
    *,
    n_tokens: int,
    batch_size: int,
    seed: int,
    specials: Tensor,
    include_special: bool,
) -> Iterator[Chunk]:
    """Any token source (texts, files, tasks, corpora, token tensors, generators), one document per padded row
    (:func:`mechwork.data.sources.model_rows`: BOS by the model's convention, encoders with ``[CLS] ... [SEP]``
    and an attention mask)."""
    from ...core.prompts import pad_rows
    from ...data.sources import model_rows, token_source

    rows = model_rows(model, lambda: token_source(model, source, seed=seed), what="the latent statistics source")
    have = 0
    while have < n_tokens:
        group = [r for _, r in zip(range(batch_size), rows)]
        if not group:
            return
        enc = pad_rows(model, group)
        real = enc.mask.bool()
        acts = capture(model, enc.tokens, [site], attention_mask=enc.attention_mask)[site]
        c = _chunk(sae, acts, enc.tokens, real, specials, include_special, torch.zeros_like(enc.tokens), None)
        have += int(c.counted.sum())
        yield c
