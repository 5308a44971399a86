"""Batches for the latent-statistics pass: an activation store's rows, or a token source run through a model.

Each batch comes as a :class:`~.accumulate.Chunk` holding the SAE's sparse codes of every position, the token
ids (``-1`` on padding added for batching), which positions count (special tokens -- BOS, EOS, padding, CLS,
SEP, UNK of the tokenizer -- are left out unless ``include_special``), the fold of each position and, on the
generated language with a shipped model's word tokenizer, the ground-truth tag of each token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
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


def special_ids(tok: Any) -> Int[Tensor, " n"]:
    """Ids of the tokenizer's special tokens (BOS, EOS, padding, CLS, SEP, UNK, MASK)."""
    ids = set(getattr(tok, "all_special_ids", None) or []) if tok is not None else set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id"):
        v = getattr(tok, name, None) if tok is not None else None
        if isinstance(v, int):
            ids.add(v)
    return torch.tensor(sorted(ids), dtype=torch.long)


def token_strings(tok: Any) -> Callable[[Sequence[int]], list[str]]:
    """A cached id -> display string function (each id decoded on its own, spaces kept)."""
    if tok is None:
        return lambda ids: [f"#{int(i)}" for i in ids]

    @functools.cache
    def one(i: int) -> str:
        try:
            return str(tok.decode([i], clean_up_tokenization_spaces=False))
        except TypeError:
            return str(tok.decode([i]))

    return lambda ids: [one(int(i)) for i in ids]


def is_word_tokenizer(tok: Any) -> bool:
    """Whether ``tok`` is the generated language's word-level tokenizer (then documents carry tags)."""
    if tok is None:
        return False
    from ...data.tokenizer import id_to_word

    words = id_to_word()
    try:
        return len(tok) == len(words) and tok.convert_ids_to_tokens(list(range(len(words)))) == list(words)
    except Exception:  # noqa: BLE001 - a foreign tokenizer object: not the word tokenizer
        return False


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
    tok: Any,
    *,
    n_tokens: int,
    batch_size: int,
    context: int,
    seed: int,
    specials: Tensor,
    include_special: bool,
) -> Iterator[Chunk]:
    """Any token source (texts, token tensors, files, tasks, corpora, generators) packed into windows."""
    from ...data.sources import TokenSource, pack

    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        bos = getattr(tok, "cls_token_id", None)
    docs = TokenSource(source, tokenizer=tok, seed=seed).documents()
    have = 0
    for w in pack(docs, context, bos_id=bos, batch=batch_size):
        tokens = w.tokens
        acts = capture(model, tokens, [site])[site]
        c = _chunk(
            sae,
            acts,
            tokens,
            torch.ones_like(tokens, dtype=torch.bool),
            specials,
            include_special,
            torch.zeros_like(tokens),
            None,
        )
        have += int(c.counted.sum())
        yield c
        if have >= n_tokens:
            return
