"""Shuffled (or ordered) batches of rows from memory-mapped activations.

Indices come first (:func:`row_batches`: one permutation of the rows per epoch, reproducible from
``(seed, epoch)``), then a background thread gathers the rows of the next batches (``numpy.take`` on the
mapped tensors releases the GIL) while the consumer works on the current one. On a CUDA device the rows are
gathered into pinned buffers and copied with ``non_blocking=True``, in the stored dtype, then converted on
the device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import ConfigError, NonFiniteError
from .background import Background


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch, derived from ``(seed, epoch)`` (independent of other epochs)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def check_batching(batch_size: Any, epochs: Any, start: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a positive integer or None (forever), got {epochs!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be a non-negative integer (batches to skip), got {start!r}")


def row_batches(
    rows: Tensor, batch_size: int, *, shuffle: bool, seed: int, epochs: int | None, drop_last: bool, start: int = 0
) -> Iterator[Tensor]:
    """Batches of row indices: each epoch visits every index of ``rows`` exactly once.

    With ``shuffle`` the order is a fresh permutation per epoch; ``epochs=None`` never ends; ``start`` skips
    that many batches (to resume a training run) without reading anything.
    """
    check_batching(batch_size, epochs, start)
    n = int(rows.numel())
    if n == 0:
        return
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    if per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} exceeds the {n} rows available and drop_last=True leaves no batch")
    first_epoch, skip = divmod(start, per_epoch)
    for epoch in itertools.count(first_epoch) if epochs is None else range(first_epoch, epochs):
        order = rows[torch.randperm(n, generator=epoch_generator(seed, epoch))] if shuffle else rows
        for b in range(skip, per_epoch):
            yield order[b * batch_size : (b + 1) * batch_size]
        skip = 0


def _resolve_rows(rows: Any, n_tokens: int) -> Tensor:
    if rows is None:
        return torch.arange(n_tokens)
    if isinstance(rows, slice):
        return torch.arange(n_tokens)[rows]
    t = torch.as_tensor(rows)
    if t.dtype == torch.bool:
        if t.shape != (n_tokens,):
            raise ConfigError(f"a boolean row mask must have shape ({n_tokens},), got {tuple(t.shape)}")
        return t.nonzero().squeeze(1)
    if t.dtype.is_floating_point or t.ndim != 1:
        raise ConfigError(
            f"rows must be a slice, a 1-D tensor of row indices or a boolean mask, got {t.dtype} {tuple(t.shape)}"
        )
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_tokens):
        raise ConfigError(f"row indices must lie in [0, {n_tokens}), got min {int(t.min())}, max {int(t.max())}")
    return t


def gather_rows(src: Tensor, idx: Tensor, *, pin: bool = False) -> Tensor:
    """``src[idx]`` for a CPU tensor, copied row by row with ``numpy.take`` (any dtype, bfloat16 included).

    torch's ``index_select`` parallelises over its intra-op thread pool, which collapses (several times slower
    than one thread) when other processes compete for the cores; ``numpy.take`` copies each row with one
    ``memcpy``, releases the GIL and does not depend on the thread pool. ``pin`` gathers into pinned memory.
    """
    if src.device.type != "cpu":
        return src.index_select(0, idx.to(src.device))
    if not src.is_contiguous():  # a strided view: reshaping it would copy all of it for every batch
        return src.index_select(0, idx).pin_memory() if pin else src.index_select(0, idx)
    out = torch.empty((idx.numel(), *src.shape[1:]), dtype=src.dtype, pin_memory=pin)
    if idx.numel() == 0 or src[0].numel() == 0:
        return out
    raw_src = src.reshape(src.shape[0], -1).view(torch.uint8).numpy()
    raw_out = out.reshape(out.shape[0], -1).view(torch.uint8).numpy()
    np.take(raw_src, idx.numpy(), axis=0, out=raw_out, mode="clip")  # indices were checked: clip avoids buffering
    return out


def iterate(
    sources: dict[str, Tensor],
    index_iter: Iterator[Tensor],
    *,
    single: str | None,
    device: torch.device,
    dtype: torch.dtype,
    flatten: bool,
    with_indices: bool,
    prefetch: int,
    locate: Callable[[str, int], str] | None = None,
) -> Iterator[Any]:
    """Turn index batches into tensors (one site) or dicts of tensors (several sites).

    Every gathered batch is checked for NaN/inf (a store damaged after it was written); ``locate(name, row)``
    says where such a row lives (the shard file) for the error.
    """
    cuda = device.type == "cuda"
    gathered = _gathered(sources, index_iter, pin=cuda, locate=locate)
    batches = Background(gathered, depth=prefetch, name="mechwork-cache-loader") if prefetch > 0 else gathered
    try:
        for idx, raw in batches:
            out = {}
            for name, t in raw.items():
                if t.device != device:
                    t = t.to(device, non_blocking=cuda)
                t = t.to(dtype)
                out[name] = t.reshape(t.shape[0], -1) if flatten else t
            result = out[single] if single is not None else out
            yield (idx, result) if with_indices else result
    finally:
        if isinstance(batches, Background):
            batches.close()


def _gathered(
    sources: dict[str, Tensor],
    index_iter: Iterator[Tensor],
    *,
    pin: bool,
    locate: Callable[[str, int], str] | None = None,
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    for idx in index_iter:
        out = {name: gather_rows(src, idx, pin=pin) for name, src in sources.items()}
        for name, t in out.items():
            if t.is_floating_point() and t.numel() and not _finite(t):
                bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
                row = int(idx[bad.nonzero()[0, 0]])
                where = locate(name, row) if locate is not None else "the store"
                raise NonFiniteError(
                    f"site {name}: NaN or inf at store row {row} ({where}): the store is corrupt; "
                    "ActivationStore.open(path, verify=True) checks every shard"
                )
        yield idx, out


def _finite(t: Tensor) -> bool:
    """Whether every value is finite: the sum first (about 10x cheaper than ``isfinite``; NaN/inf make it
    non-finite), the exact check only when the sum is not finite (it may have overflowed)."""
    total = float(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))
    return math.isfinite(total) or bool(torch.isfinite(t).all())


def as_site_list(sites: Any) -> tuple[list[Any], bool]:
    """``(site names, whether a single site was given)``; ``("resid_post", 2)`` counts as one site."""
    if isinstance(sites, str) or (isinstance(sites, tuple) and len(sites) == 2 and isinstance(sites[1], int)):
        return [sites], True
    names = list(sites)
    if not names:
        raise ConfigError("no sites given")
    return names, False
