"""Activation caching: many sites in one forward pass, a sharded memory-mapped store, shuffled streaming.

>>> store = mechwork.cache.collect(model, texts, ["resid_post.1", "z.2"], out="acts/", n_tokens=100_000)
>>> store["resid_post.1"].shape                      # [n_tokens, d_model], memory-mapped
>>> for x in store.batches("resid_post.1", 4096):   # shuffled, every row once per epoch
...     ...
>>> store = mechwork.cache.ActivationStore.open("acts/")

See ``mechwork/cache/README.md`` for the on-disk format and the guarantees (atomic shards, resume, checks).
"""

from .collect import collect
from .format import Manifest, SiteEntry
from .store import ActivationStore

__all__ = ["collect", "ActivationStore", "Manifest", "SiteEntry"]
