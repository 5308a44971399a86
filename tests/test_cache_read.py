"""mechwork.cache read path: shards mapped back to back, the no-mmap fallback, copy-on-write views, lifetimes,
and row gathering in every storage dtype."""

from __future__ import annotations

import gc
import hashlib

import pytest
import torch

from mechwork.cache import ActivationStore, collect, mapping
from mechwork.cache.loader import gather_rows

TOKENS = torch.randint(3, 200, (24, 64), generator=torch.Generator().manual_seed(9))
SITES = ["resid_post.0", "z.1"]


@pytest.fixture(scope="module")
def store(toy_mixed, tmp_path_factory):
    s = collect(
        toy_mixed,
        TOKENS,
        SITES,
        out=tmp_path_factory.mktemp("read") / "s",
        batch_size=4,
        bos=False,
        shard_tokens=512,
        progress=False,
    )
    assert len(s.manifest.shards) == 3  # 1536 rows in three shards
    return s


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_fallback_without_mmap_reads_the_same(store, monkeypatch):
    mapped = {s: store[s].clone() for s in SITES}
    monkeypatch.setattr(mapping, "_LIBC", None)
    with pytest.warns(UserWarning, match="reading activation shards into memory"):
        fresh = ActivationStore.open(store.path)
        for s in SITES:
            assert torch.equal(fresh[s], mapped[s])
        assert torch.equal(fresh.tokens, store.tokens)


def test_views_are_copy_on_write(store):
    before = _digest(store.path)
    view = ActivationStore.open(store.path)["resid_post.0"]
    view[0].fill_(123.0)  # writes land in private pages, never in the shard files
    view[-1].fill_(-1.0)
    assert _digest(store.path) == before
    assert float(ActivationStore.open(store.path)["resid_post.0"][0, 0]) != 123.0


def test_mapping_outlives_its_store(store):
    expected = store["z.1"][1000:1010].clone()
    s = ActivationStore.open(store.path)
    part = s["z.1"][1000:1010]
    del s
    gc.collect()
    assert torch.equal(part, expected)  # the mapping is released with the last view, not with the store


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_gather_rows_every_dtype(dtype):
    src = (torch.randn(300, 4, 6) * 100).to(dtype)
    idx = torch.randperm(300)[:77]
    out = gather_rows(src, idx)
    assert out.dtype == dtype and torch.equal(out, src[idx])
    assert gather_rows(src, torch.empty(0, dtype=torch.long)).shape == (0, 4, 6)
    strided = src.transpose(1, 2)
    assert torch.equal(gather_rows(strided, idx), strided[idx])


def test_shuffled_batches_cross_shard_boundaries(store):
    x = store["resid_post.0"]
    seen = torch.cat([idx for idx, _ in store.batches("resid_post.0", 200, with_indices=True, seed=5)])
    assert seen.min() < 512 and seen.max() >= 1024  # rows from the first and the last shard
    for idx, b in store.batches("resid_post.0", 200, with_indices=True, seed=5, prefetch=0):
        assert torch.equal(b, x[idx])
