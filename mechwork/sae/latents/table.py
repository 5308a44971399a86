"""Per-latent tables of the best ``K`` entries by a key, filled by a stream of (latent, key, payload) items.

One :class:`TopTable` keeps, for every latent, up to ``K`` entries with the largest keys, at most one per
context hash (de-duplication: two entries whose shown contexts are token-for-token identical are one entry, the
one with the larger key). With the activation as key it holds the top-activating contexts; with a uniform random
priority as key it holds a uniform sample without replacement of the latent's firing events ("bottom-k"
sampling, which merges exactly across batches).

Work per batch is bounded: items whose key does not beat the latent's current ``K``-th key are dropped before
any payload is built, so after the first batches only a few items per batch reach the merge.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

HASH_BITS = 40  # context hashes are masked to 40 bits; (latent << 40 | hash) stays below 2**63 for 2**23 latents


def context_hash(tokens: Int[Tensor, "n L"]) -> Int[Tensor, " n"]:
    """A 40-bit hash of each row of token ids (``-1`` marks positions outside the window)."""
    h = torch.zeros(tokens.shape[0], dtype=torch.long)
    for c in range(tokens.shape[1]):
        h = (h * 1_000_003) ^ (tokens[:, c].long() + 2)  # int64 arithmetic wraps
    return h & ((1 << HASH_BITS) - 1)


def select(lat: Int[Tensor, " n"], key: Float[Tensor, " n"], hsh: Int[Tensor, " n"], k: int) -> Int[Tensor, " m"]:
    """Indices of the items kept: per latent, one item per hash (the largest key), then the ``k`` largest keys.

    Keys must be non-negative (activations, uniform priorities): their float32 bit patterns then sort like the
    values, so one integer sort orders the items by latent, then by descending key. The result keeps that order.
    """
    if lat.numel() == 0:
        return lat.new_zeros(0)
    bits = key.float().contiguous().view(torch.int32).long()
    order = torch.argsort((lat << 31) | ((1 << 31) - 1 - bits))  # latent ascending, key descending
    _, group = torch.unique((lat[order] << HASH_BITS) | hsh[order], return_inverse=True)
    pos = torch.arange(order.numel())
    first = torch.full((int(group.max()) + 1,), order.numel(), dtype=torch.long).scatter_reduce_(0, group, pos, "amin")
    kept = order[first.sort().values]  # the best item of each (latent, hash), still by latent then key
    g = lat[kept]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    pos = torch.arange(g.numel())
    group_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    return kept[(pos - group_start) < k]


class TopTable:
    """The ``k`` best entries of each of ``d_sae`` latents, each with a context of ``width`` tokens.

    Attributes
    ----------
    key : Float[Tensor, "d_sae k"]
        ``-inf`` in empty slots; rows sorted by descending key.
    value : Float[Tensor, "d_sae k"]
        The latent's activation at the entry's token.
    tokens : Int[Tensor, "d_sae k width"]
        Token ids of the context (``-1`` outside the window).
    acts : Float[Tensor, "d_sae k width"]
        The latent's activation on every context token.
    hash : Int[Tensor, "d_sae k"]
    tag : Int[Tensor, "d_sae k"]
        Ground-truth tag id of the entry's token (``-1`` when unknown).
    """

    def __init__(self, d_sae: int, k: int, width: int) -> None:
        self.k = k
        self.key = torch.full((d_sae, k), -torch.inf)
        self.value = torch.zeros(d_sae, k)
        self.tokens = torch.full((d_sae, k, width), -1, dtype=torch.int32)
        self.acts = torch.zeros(d_sae, k, width)
        self.hash = torch.zeros(d_sae, k, dtype=torch.long)
        self.tag = torch.full((d_sae, k), -1, dtype=torch.long)
        self.floor = torch.full((d_sae,), -torch.inf)  # smallest key of each latent (-inf while a slot is free)

    def threshold(self, lat: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
        """The key an item of latent ``lat`` must beat to enter (``-inf`` while the latent has free slots)."""
        return self.floor[lat]

    def count(self) -> Int[Tensor, " d_sae"]:
        return (self.key > -torch.inf).sum(1)

    def merge(
        self,
        lat: Int[Tensor, " n"],
        key: Float[Tensor, " n"],
        value: Float[Tensor, " n"],
        tokens: Int[Tensor, "n width"],
        acts: Float[Tensor, "n width"],
        hsh: Int[Tensor, " n"],
        tag: Int[Tensor, " n"],
    ) -> None:
        """Merge new items into the table.

        Slots are unordered while the pass runs (:meth:`finish` sorts them): the selection runs on keys and hashes
        alone, evicted slots are refilled with the new items that win, and only those items' payloads are written.
        """
        if lat.numel() == 0:
            return
        touched, local = torch.unique(lat, return_inverse=True)
        u = touched.numel()
        old_key = self.key[touched]  # [u, k]
        rows, cols = (old_key > -torch.inf).nonzero(as_tuple=True)
        n_old = rows.numel()
        all_local = torch.cat([rows, local])
        all_key = torch.cat([old_key[rows, cols], key])
        all_hash = torch.cat([self.hash[touched][rows, cols], hsh])
        keep = select(all_local, all_key, all_hash, self.k)
        kept_old = torch.zeros(u, self.k, dtype=torch.bool)
        ko = keep[keep < n_old]
        kept_old[rows[ko], cols[ko]] = True
        new = keep[keep >= n_old] - n_old  # winners among the new items, grouped by latent
        # the r-th winner of a latent takes the r-th slot of that latent not held by a kept old item
        free = ~kept_old
        free_rank = free.long().cumsum(1) - 1
        fr, fc = free.nonzero(as_tuple=True)
        slot_at = torch.full((u * self.k,), -1, dtype=torch.long)
        slot_at[fr * self.k + free_rank[fr, fc]] = fc
        g = local[new]
        start = torch.ones_like(g, dtype=torch.bool)
        start[1:] = g[1:] != g[:-1]
        pos = torch.arange(g.numel())
        rank = pos - torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
        slot = slot_at[g * self.k + rank]
        rows_new = touched[g]
        # slots neither kept nor refilled become empty
        emptied = free.clone()
        emptied[g, slot] = False
        er, ec = emptied.nonzero(as_tuple=True)
        self.key[touched[er], ec] = -torch.inf
        self.tokens[touched[er], ec] = -1
        self.acts[touched[er], ec] = 0
        self.key[rows_new, slot] = key[new]
        self.value[rows_new, slot] = value[new].to(self.value.dtype)
        self.tokens[rows_new, slot] = tokens[new].to(self.tokens.dtype)
        self.acts[rows_new, slot] = acts[new].to(self.acts.dtype)
        self.hash[rows_new, slot] = hsh[new]
        self.tag[rows_new, slot] = tag[new]
        self.floor[touched] = self.key[touched].min(1).values

    def finish(self) -> None:
        """Sort every latent's entries by descending key (empty slots last)."""
        order = torch.argsort(self.key, dim=1, descending=True, stable=True)
        for name in ("key", "value", "hash", "tag"):
            setattr(self, name, getattr(self, name).gather(1, order))
        wide = order[:, :, None].expand(-1, -1, self.tokens.shape[2])
        self.tokens = self.tokens.gather(1, wide)
        self.acts = self.acts.gather(1, wide)
