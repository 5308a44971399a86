"""Where an SAE's training activations come from: a tensor, an ActivationStore, an iterator, or the model run
on a token source (the generated corpus, text or JSONL files, texts, tasks).

Every source yields batches ``[batch, *shape]`` and can restart at any batch index, which is what makes
resumed training identical to an uninterrupted run:

* :class:`TensorSource` (a tensor or a memory-mapped ``store[site]``): the stream is the concatenation of
  seeded per-epoch permutations of the rows, so batch ``b`` is computed directly.
* :class:`StreamSource` (model + any token source): documents are drawn in chunks of about ``buffer`` tokens,
  the chunk's activations are captured and shuffled with a per-chunk seed; restarting at a batch replays the
  source to that chunk and recomputes it.
* :class:`IteratorSource`: batches from any iterable, re-chunked to the batch size; resuming skips batches,
  which is exact only when the iterable can be iterated again from the start (a list, a generator function).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError, ShapeError, SiteError


class TensorSource:
    """Shuffled batches from ``data [n, *shape]`` (a tensor or memory-mapped store view)."""

    def __init__(
        self, data: Tensor, *, seed: int = 0, shuffle: bool = True, describe: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(data, Tensor) or data.ndim < 2:
            raise ShapeError(
                f"activations must be a tensor [n_tokens, d] (or [n_tokens, *shape]), got {_shape_of(data)}"
            )
        if data.shape[0] == 0:
            raise DataError("activations are empty (0 rows)")
        if not data.dtype.is_floating_point:
            raise ShapeError(f"activations must be floating point, got {data.dtype}")
        self.data, self.seed, self.shuffle = data, seed, shuffle
        self.shape = tuple(data.shape[1:])
        self.n_tokens: int | None = int(data.shape[0])
        self.info = dict(describe or {"source": "tensor"})

    def _perm(self, epoch: int) -> Tensor:
        n = self.data.shape[0]
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        n = self.data.shape[0]
        pos = start * batch_size
        epoch, offset = divmod(pos, n)
        perm = self._perm(epoch)
        while True:
            parts, need = [], batch_size
            while need:
                take = perm[offset : offset + need]
                parts.append(take)
                need -= take.numel()
                offset += take.numel()
                if offset >= n:
                    epoch, offset = epoch + 1, 0
                    perm = self._perm(epoch)
            rows = torch.sort(torch.cat(parts)).values  # sorted: sequential reads from a memory map
            yield self.data[rows]

    def sample(self, n: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed + 7919)
        rows = torch.randperm(self.data.shape[0], generator=gen)[: min(n, self.data.shape[0])]
        return self.data[torch.sort(rows).values]


class IteratorSource:
    """Batches from an iterable of ``[batch, *shape]`` tensors, re-chunked to the training batch size."""

    def __init__(self, iterable: Iterable[Tensor], *, describe: dict[str, Any] | None = None) -> None:
        self.iterable = iterable
        self._peeked: list[Tensor] = []
        self._it: Iterator[Tensor] | None = None
        first = self._next_raw()
        self._peeked.append(first)
        self.shape = tuple(first.shape[1:])
        self.n_tokens: int | None = None
        self.info = dict(describe or {"source": "iterator"})

    def _next_raw(self) -> Tensor:
        if self._it is None:
            self._it = iter(self.iterable)
        try:
            t = next(self._it)
        except StopIteration:
            raise DataError(
                "the activation iterator ran out of batches; give more data or fewer training tokens"
            ) from None
        if not isinstance(t, Tensor) or t.ndim < 2 or not t.dtype.is_floating_point:
            raise ShapeError(f"the activation iterator must yield float tensors [batch, d]; got {_shape_of(t)}")
        if hasattr(self, "shape") and tuple(t.shape[1:]) != self.shape:
            raise ShapeError(
                f"the activation iterator changed shape: first batches had per-token shape {self.shape}, now {tuple(t.shape[1:])}"
            )
        return t

    def _raw(self) -> Iterator[Tensor]:
        while self._peeked:
            yield self._peeked.pop(0)
        while True:
            yield self._next_raw()

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        if start and self._it is not None and not self._peeked:
            self._it = None  # restart a re-iterable source from its beginning
        buf: list[Tensor] = []
        have, skip = 0, start * batch_size
        for t in self._raw():
            if skip:
                drop = min(skip, t.shape[0])
                t, skip = t[drop:], skip - drop
                if not t.shape[0]:
                    continue
            buf.append(t)
            have += t.shape[0]
            while have >= batch_size:
                cat = torch.cat(buf) if len(buf) > 1 else buf[0]
                yield cat[:batch_size]
                rest = cat[batch_size:]
                buf, have = ([rest] if rest.shape[0] else []), rest.shape[0]

    def sample(self, n: int) -> Tensor:
        have = sum(t.shape[0] for t in self._peeked)
        while have < n:
            try:
                t = self._next_raw()
            except DataError:
                break
            self._peeked.append(t)
            have += t.shape[0]
        return torch.cat(self._peeked)[:n]


class StreamSource:
    """Activations of ``model`` at ``site`` on a stream of documents, shuffled within buffers of ``buffer`` tokens.

    The documents come from any token source (:func:`mechwork.data.sources.token_source`): the generated corpus
    (default: ``Corpus(seed, split)``), a text / JSONL file, a list of texts, a task, token tensors. They are run
    ``forward_docs`` at a time, each alone in its (right-padded, masked) row: a causal model's BOS is added by
    the model family's convention, an encoder's ``[CLS] ... [SEP]`` come from its tokenizer; a document longer
    than the context is cut into context-sized rows (causal; each further row starts with BOS again) or
    truncated with a warning (encoder). A finite source that runs out is read again from its start with a
    :class:`~mechwork.core.errors.MechworkWarning` (the SAE then sees repeated data).
    """

    def __init__(
        self,
        model: Any,
        site_name: str,
        *,
        seed: int = 0,
        buffer: int = 32768,
        forward_docs: int = 64,
        split: str = "train",
        source: Any = None,
    ) -> None:
        from ..core.sites import site as resolve_site

        self.model, self.site = model, resolve_site(model, site_name)
        if self.site.d is None:
            raise SiteError(
                f"site {self.site.name} has no fixed per-token shape (attention patterns cannot be SAE inputs)"
            )
        self.seed, self.buffer, self.forward_docs, self.split = seed, buffer, forward_docs, split
        self.source = source
        self.shape = tuple(self.site.shape)  # type: ignore[arg-type]
        self.n_tokens: int | None = None
        if source is None:
            self.info = {"source": "stream", "corpus_seed": seed, "corpus_split": split}
        else:
            self.info = {"source": "stream", "token_source": self._token_source().description, "data_seed": seed}

    def _token_source(self) -> Any:
        from ..data import Corpus
        from ..data.sources import token_source

        src = Corpus(self.seed, split=self.split) if self.source is None else self.source
        return token_source(self.model, src, seed=self.seed)

    def _rows(self) -> Iterator[list[int]]:
        from ..data.sources import model_rows

        return model_rows(self.model, self._token_source, loop=True, what="the SAE's token source")

    def _chunks(self) -> Iterator[tuple[int, Tensor]]:
        from ..core.hooks import capture, model_device
        from ..core.prompts import pad_rows

        rows = self._rows()
        dev = model_device(self.model)
        c = 0
        while True:
            parts, have = [], 0
            while have < self.buffer:
                group = list(itertools.islice(rows, self.forward_docs))
                if not group:
                    raise DataError("the token source ended")
                enc = pad_rows(self.model, group, last_offset=0)
                am = None if enc.attention_mask is None else enc.attention_mask.to(dev)
                acts = capture(self.model, enc.tokens.to(dev), [self.site.name], attention_mask=am)[self.site.name]
                keep = enc.mask.to(acts.device)
                parts.append(acts[keep].float())
                have += int(keep.sum())
            chunk = torch.cat(parts)
            perm = torch.randperm(chunk.shape[0], generator=torch.Generator().manual_seed(self.seed * 1_000_003 + c))
            yield c, chunk[perm]
            c += 1

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        # every chunk contributes floor((carry + chunk) / batch) batches; the remainder is carried forward
        carry = torch.empty((0, *self.shape))
        produced = 0
        for _, chunk in self._chunks():
            data = torch.cat([carry, chunk]) if carry.shape[0] else chunk
            n_b = data.shape[0] // batch_size
            for b in range(n_b):
                if produced >= start:
                    yield data[b * batch_size : (b + 1) * batch_size]
                produced += 1
            carry = data[n_b * batch_size :]

    def sample(self, n: int) -> Tensor:
        out, have = [], 0
        for _, chunk in self._chunks():
            out.append(chunk)
            have += chunk.shape[0]
            if have >= n:
                break
        return torch.cat(out)[:n]


def _shape_of(x: Any) -> str:
    return (
        f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
        if isinstance(x, Tensor)
        else type(x).__name__
    )


def _is_store(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("sites", "n_tokens", "batches")) and hasattr(x, "__getitem__")


def store_source(store: Any, site: str | None, *, seed: int) -> TensorSource:
    """A :class:`TensorSource` over one site of an ActivationStore (memory-mapped, not loaded)."""
    sites = list(store.sites)
    if site is None:
        if len(sites) != 1:
            raise SiteError(f"the activation store holds several sites {sites}; choose one with site=")
        site = sites[0]
    if site not in sites and hasattr(store, "site_name"):
        site = store.site_name(site)  # the store resolves aliases ('resid_post.2', 'z.1') and names close matches
    if site not in sites:
        raise SiteError(f"the activation store has no site {site!r}; it holds {sites}")
    info = {
        "source": "store",
        "store": str(getattr(store, "path", "")),
        "site": site,
        "model": getattr(store, "model_spec", None),
        "context_size": getattr(store, "context", None),
    }
    return TensorSource(store[site], seed=seed, describe=info)


def make_source(
    cfg: Any,
    activations: Any,
    model: Any,
    open_store: Callable[[str], Any] | None = None,
    source: Any = None,
) -> Any:
    """Pick the source from ``train``'s arguments (see :class:`mechwork.sae.TrainConfig`)."""
    given = [x is not None for x in (activations, cfg.store, cfg.model if model is None else model)]
    if sum(given) == 0:
        raise ConfigError(
            "no training data: pass activations to train(), or set store= or model= and site= in the config"
        )
    if activations is not None:
        if cfg.store is not None or cfg.model is not None:
            raise ConfigError("activations were passed directly and the config also names a store/model; give one")
        if isinstance(activations, Tensor):
            return TensorSource(activations, seed=cfg.data_seed)
        if _is_store(activations):
            return store_source(activations, cfg.site, seed=cfg.data_seed)
        if isinstance(activations, (str, bytes)) or not hasattr(activations, "__iter__"):
            raise ConfigError(
                f"activations must be a tensor, an ActivationStore or an iterable of tensors, got {type(activations).__name__}"
            )
        return IteratorSource(activations)
    if cfg.store is not None:
        if open_store is None:
            from ..cache import ActivationStore

            open_store = ActivationStore.open
        return store_source(open_store(cfg.store), cfg.site, seed=cfg.data_seed)
    if model is None:
        from ..models import load_model

        model = load_model(cfg.model, device="cpu")
    if cfg.site is None:
        raise ConfigError("streaming from a model needs site= (e.g. 'resid_post.2')")
    return StreamSource(
        model,
        cfg.site,
        seed=cfg.data_seed,
        buffer=max(cfg.stream_buffer, cfg.batch_size),
        source=source if source is not None else getattr(cfg, "source", None),
    )


def total_steps(cfg: Any, source: Any) -> int:
    """Training steps: ``tokens // batch_size``, or one pass over a finite source."""
    if cfg.tokens is not None:
        return cfg.tokens // cfg.batch_size
    if source.n_tokens is None:
        raise ConfigError("tokens= is required when training from a model stream or an iterator")
    steps = source.n_tokens // cfg.batch_size
    if steps < 1:
        raise ConfigError(f"the data has {source.n_tokens} tokens, fewer than one batch of {cfg.batch_size}")
    return steps


__all__ = ["TensorSource", "IteratorSource", "StreamSource", "make_source", "store_source", "total_steps"]
