"""The state of the one streamed pass behind :func:`mechwork.sae.latent_stats`.

Every batch of tokens is encoded once; its sparse codes then update, per latent, the firing count, the sum and
the extremes of its activations, a histogram over logarithmic bins (quantiles are read from it), the count of
firings on special tokens, co-occurrence counts with ground-truth tags (two folds: one chooses labels, the other
scores them), the top-activating contexts and a uniform sample of firing events (both de-duplicated by context).
Memory does not grow with the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .table import TopTable, context_hash, select

LOG2_LO = -16  # histogram covers activations 2**-16 .. 2**16 (values outside fall in the end bins)
LOG2_HI = 16
SUB = 16  # bins per octave: bin width 4.4%, so quantiles read from the histogram are within ~2.2%
N_BINS = (LOG2_HI - LOG2_LO) * SUB


_EDGES = torch.pow(2.0, torch.arange(N_BINS + 1, dtype=torch.float64) / SUB + LOG2_LO)


def bin_edges() -> Float[Tensor, " n_bins_plus_1"]:
    """Lower edges of the logarithmic activation bins (and the upper edge of the last one)."""
    return _EDGES.clone()


def to_bin(v: Tensor) -> Tensor:
    return ((torch.log2(v.double().clamp_min(1e-30)) - LOG2_LO) * SUB).floor().long().clamp(0, N_BINS - 1)


@dataclass
class Chunk:
    """One batch of the pass.

    ``vals``/``idx`` are the sparse codes of every position of ``tokens`` (row-major); ``tokens`` is ``-1`` on
    padding; ``counted`` marks the positions the statistics count (real, and not special unless asked);
    ``special`` the real special-token positions that are not counted; ``fold`` 0 (shown, chooses labels) or 1
    (held out, scores labels); ``tags`` ground-truth tag ids or ``None``.
    """

    vals: Float[Tensor, "n kk"]
    idx: Int[Tensor, "n kk"]
    tokens: Int[Tensor, "b p"]
    counted: Bool[Tensor, "b p"]
    special: Bool[Tensor, "b p"]
    fold: Int[Tensor, "b p"]
    tags: Int[Tensor, "b p"] | None
    lookup: Any = None  # (multiplier, sorted (position, latent) keys, values), built by _lookup on first need


class Accumulator:
    """Streaming per-latent statistics (see the module docstring)."""

    def __init__(self, d_sae: int, *, top: int, samples: int, left: int, right: int, seed: int = 0) -> None:
        self.d_sae, self.left, self.right = d_sae, left, right
        width = left + 1 + right
        self.count = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.min = torch.full((d_sae,), torch.inf)
        self.special = torch.zeros(d_sae, dtype=torch.long)
        self.hist = torch.zeros(d_sae * N_BINS, dtype=torch.int32)
        self.n_tokens = 0
        self.n_special = 0
        self.n_fold = [0, 0]
        self.tag_counts = torch.zeros(2, d_sae, 0, dtype=torch.long)
        self.tag_totals = torch.zeros(2, 0, dtype=torch.long)
        self.top = TopTable(d_sae, top, width)
        self.sample = TopTable(d_sae, samples, width)
        self.gen = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------------------------------------ update
    def _grow_tags(self, n: int) -> None:
        have = self.tag_counts.shape[2]
        if n > have:
            self.tag_counts = torch.nn.functional.pad(self.tag_counts, (0, n - have))
            self.tag_totals = torch.nn.functional.pad(self.tag_totals, (0, n - have))

    def update(self, c: Chunk, n_tags: int = 0) -> None:
        b, p = c.tokens.shape
        counted = c.counted.reshape(-1)
        fold = c.fold.reshape(-1)
        self.n_tokens += int(counted.sum())
        self.n_special += int(c.special.sum())
        for f in (0, 1):
            self.n_fold[f] += int((counted & (fold == f)).sum())
        active = c.vals > 0
        row, slot = active.nonzero(as_tuple=True)
        lat, val = c.idx[row, slot], c.vals[row, slot].float()
        sp = c.special.reshape(-1)[row]
        self.special += torch.bincount(lat[sp], minlength=self.d_sae)
        keep = counted[row]
        row, lat, val = row[keep], lat[keep], val[keep]
        self.count += torch.bincount(lat, minlength=self.d_sae)
        self.total += torch.bincount(lat, weights=val.double(), minlength=self.d_sae)
        self.max.scatter_reduce_(0, lat, val, "amax")
        self.min.scatter_reduce_(0, lat, val, "amin")
        self.hist.index_add_(0, lat * N_BINS + to_bin(val), torch.ones_like(lat, dtype=torch.int32))
        tag_row = None
        if c.tags is not None and n_tags:
            self._grow_tags(n_tags)
            tags = c.tags.reshape(-1)
            tag_row = tags[row]
            for f in (0, 1):
                sel = (fold[row] == f) & (tag_row >= 0)
                flat = lat[sel] * n_tags + tag_row[sel]
                self.tag_counts[f, :, :n_tags] += torch.bincount(flat, minlength=self.d_sae * n_tags).reshape(
                    self.d_sae, n_tags
                )
                tk = counted & (fold == f) & (tags >= 0)
                self.tag_totals[f, :n_tags] += torch.bincount(tags[tk], minlength=n_tags)
        shown = fold[row] == 0
        row, lat, val = row[shown], lat[shown], val[shown]
        tag_row = tag_row[shown] if tag_row is not None else torch.full_like(lat, -1)
        prio = torch.rand(lat.shape[0], generator=self.gen)
        for table, key in ((self.top, val), (self.sample, prio)):
            self._offer(table, c, p, row, lat, key, val, tag_row)

    def _offer(
        self, table: TopTable, c: Chunk, p: int, row: Tensor, lat: Tensor, key: Tensor, val: Tensor, tag: Tensor
    ) -> None:
        ok = key > table.threshold(lat)
        row, lat, key, val, tag = row[ok], lat[ok], key[ok], val[ok], tag[ok]
        if not row.numel():
            return
        offs = torch.arange(-self.left, self.right + 1)
        pos = (row % p)[:, None] + offs
        inside = (pos >= 0) & (pos < p)
        nb = (row - row % p)[:, None] + pos.clamp(0, p - 1)
        flat_tok = c.tokens.reshape(-1)
        ctx = torch.where(inside, flat_tok[nb], torch.full_like(nb, -1))
        inside &= ctx >= 0
        hsh = context_hash(ctx)
        keep = select(lat, key, hsh, table.k)
        row, lat, key, val, tag, ctx, nb, inside, hsh = (
            t[keep] for t in (row, lat, key, val, tag, ctx, nb, inside, hsh)
        )
        acts = _lookup(c, nb, lat) * inside
        table.merge(lat, key, val, ctx, acts, hsh, tag)


def _lookup(c: Chunk, nb: Int[Tensor, "n L"], lat: Int[Tensor, " n"]) -> Float[Tensor, "n L"]:
    """The activation of latent ``lat[i]`` at every batch position ``nb[i, :]`` (0 where it is not active).

    Few queries (the usual case once the tables are full): a direct gather of the queried positions' codes.
    Many (the first batches): the batch's active (position, latent) pairs are sorted once and each query is a
    binary search.
    """
    if nb.numel() < 8 * c.vals.shape[0]:
        return (c.vals[nb] * (c.idx[nb] == lat[:, None, None])).sum(-1).float()
    if c.lookup is None:
        d = int(c.idx.max()) + 1 if c.idx.numel() else 1
        active = c.vals > 0
        rows = torch.arange(c.vals.shape[0])[:, None].expand_as(c.idx)[active]
        keys = rows * d + c.idx[active]
        order = torch.argsort(keys)
        c.lookup = (d, keys[order], c.vals[active][order].float())
    d, keys, vals = c.lookup
    if not keys.numel():
        return torch.zeros(nb.shape)
    q = nb * d + lat[:, None]
    at = torch.searchsorted(keys, q).clamp_max(keys.numel() - 1)
    return torch.where(keys[at] == q, vals[at], torch.zeros(()))
