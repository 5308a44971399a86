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

    def threshold(self, lat: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
        """The key an item of latent ``lat`` must beat to enter (``-inf`` while the latent has free slots)."""
        return self.key[lat, -1]

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
        """Merge new items (already filtered and de-duplicated or not) into the table."""
        if lat.numel() == 0:
            return
        touched = torch.unique(lat)
        old = self.key[touched] > -torch.inf  # [u, k]
        rows, cols = old.nonzero(as_tuple=True)
        o_lat = touched[rows]
        all_lat = torch.cat([o_lat, lat])
        all_key = torch.cat([self.key[o_lat, cols], key])
        all_hash = torch.cat([self.hash[o_lat, cols], hsh])
        keep = select(all_lat, all_key, all_hash, self.k)
        n_old = o_lat.numel()

        def pick(old_t: Tensor, new_t: Tensor) -> Tensor:
            return torch.cat([old_t[o_lat, cols], new_t.to(old_t.dtype)])[keep]

        k_lat = all_lat[keep]
        g_start = torch.ones_like(k_lat, dtype=torch.bool)
        g_start[1:] = k_lat[1:] != k_lat[:-1]
        pos = torch.arange(k_lat.numel())
        slot = pos - torch.cummax(torch.where(g_start, pos, torch.zeros_like(pos)), 0).values
        new_vals = {
            "value": pick(self.value, value),
            "tokens": pick(self.tokens, tokens),
            "acts": pick(self.acts, acts),
            "hash": pick(self.hash, hsh),
            "tag": pick(self.tag, tag),
        }
        new_key = all_key[keep]
        del n_old
        self.key[touched] = -torch.inf
        self.tokens[touched] = -1
        self.acts[touched] = 0
        self.key[k_lat, slot] = new_key
        for name, v in new_vals.items():
            getattr(self, name)[k_lat, slot] = v
