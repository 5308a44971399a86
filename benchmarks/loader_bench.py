"""Loader integrity costs (issue 17) and the shard-mapping choice (issue 11).

1. Opening an activation store with and without ``verify=True`` (SHA-256 of every shard + finiteness), next to
   a plain read of every value, and the digest algorithms on the same bytes (sha256 vs xxh3-128 vs blake2b).
2. ``store[site]`` over several shards: mechwork's one reserved range + ``mmap(MAP_FIXED)`` per shard (a single
   tensor, nothing read until touched) vs ``numpy.memmap`` per shard joined with ``torch.cat`` (a copy of
   every row), then one shuffled batch of 4096 rows gathered from each.
3. The corruption campaign table (tests/corruption.py) on this checkout.

    python benchmarks/loader_bench.py [--gb 1.0] [--trials 385]

Results: benchmarks/results/loader.json and the "Loader integrity" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import environment  # noqa: E402

from mechwork.cache import ActivationStore  # noqa: E402
from mechwork.cache import format as F  # noqa: E402
from mechwork.cache.stats import Moments  # noqa: E402


def synthetic_store(root: Path, gb: float, d: int = 1024) -> ActivationStore:
    """A store of ``gb`` GB of float32 activations (one site, random values), written by mechwork's writer."""
    rows = int(gb * (1 << 30)) // (4 * d)
    rows -= rows % 128
    site = F.SiteEntry(
        name="blocks.0.hook_resid_post",
        alias="resid_post.0",
        kind="resid_post",
        layer=0,
        shape=(d,),
        dir="blocks.0.hook_resid_post",
    )
    m = F.Manifest(
        model_spec="synthetic", sites=(site,), dtype="float32", context=128, bos=False, batch_size=32,
        shard_tokens=32768, source="random", n_tokens=rows, shards=(rows,), complete=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = torch.randn(rows, d, generator=g)
    meta = torch.stack(
        [torch.randint(0, 500, (rows,), generator=g), torch.arange(rows) // 128, torch.arange(rows) % 128], 1
    )
    mo = Moments.zeros(d)
    for lo in range(0, rows, 65536):
        mo.update(data[lo : lo + 65536])
    mem = ActivationStore(m, data={site.name: data, F.TOKENS: meta}, moments={site.name: mo})
    return mem.save(root, overwrite=True)


def drop_cache_hint(path: Path) -> None:
    """Ask the kernel to forget the store's pages (best effort; the numbers say whether it worked)."""
    import os

    for f in path.rglob("*.safetensors"):
        try:
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        except (OSError, AttributeError):
            pass


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_verify(root: Path, gb: float) -> dict:
    store = synthetic_store(root, gb)
    site = store.sites[0]
    files = sorted((root / store.manifest.sites[0].dir).glob("*.safetensors"))
    nbytes = sum(f.stat().st_size for f in files)
    out = {"store_gb": nbytes / 1e9, "shards": len(files)}
    out["open_s"] = best(lambda: ActivationStore.open(root))
    out["open_verify_s"] = best(lambda: ActivationStore.open(root, verify=True))
    out["read_all_s"] = best(lambda: float(ActivationStore.open(root)[site].double().sum()))
    drop_cache_hint(root)
    t = time.perf_counter()
    ActivationStore.open(root, verify=True)
    out["open_verify_cold_s"] = time.perf_counter() - t

    def digest(make):
        def run():
            for f in files:
                h = make()
                with open(f, "rb") as fh:
                    while chunk := fh.read(4 << 20):
                        h.update(chunk)

        return run

    algos = {"sha256": hashlib.sha256, "blake2b": hashlib.blake2b}
    try:
        import xxhash

        algos["xxh3_128"] = xxhash.xxh3_128
    except ImportError:
        pass
    out["digest_gb_per_s"] = {k: nbytes / 1e9 / best(digest(v), 2) for k, v in algos.items()}
    return out


def bench_mapping(root: Path) -> dict:
    """MAP_FIXED mapping vs numpy.memmap per shard + cat, over a store of several shards."""
    store = ActivationStore.open(root)
    e = store.manifest.sites[0]
    files = [root / e.dir / F.shard_name(i) for i in range(len(store.manifest.shards))]
    idx = torch.randperm(store.n_tokens, generator=torch.Generator().manual_seed(0))[:4096]

    def fixed():
        s = ActivationStore.open(root)
        return s[e.name][idx].sum()

    def memmap_cat():
        parts = [
            torch.from_numpy(np.memmap(f, dtype=np.float32, mode="c", offset=store.manifest.align, shape=(r, *e.shape)))
            for f, r in zip(files, store.manifest.shards)
        ]
        return torch.cat(parts)[idx].sum()

    def memmap_index():  # per-shard views, a batch gathered shard by shard (no single tensor)
        parts = [
            torch.from_numpy(np.memmap(f, dtype=np.float32, mode="c", offset=store.manifest.align, shape=(r, *e.shape)))
            for f, r in zip(files, store.manifest.shards)
        ]
        bounds = torch.tensor(np.cumsum([0, *store.manifest.shards]))
        shard = torch.bucketize(idx, bounds[1:], right=True)
        return sum(parts[int(s)][idx[shard == s] - bounds[s]].sum() for s in shard.unique())

    assert torch.allclose(fixed(), memmap_cat()) and torch.allclose(fixed(), memmap_index())
    return {
        "shards": len(files),
        "map_fixed_open_and_gather_s": best(fixed),
        "numpy_memmap_cat_open_and_gather_s": best(memmap_cat),
        "numpy_memmap_per_shard_gather_s": best(memmap_index),
    }


def bench_campaign(trials: int) -> dict:
    import corruption

    root = Path(tempfile.mkdtemp(prefix="mechwork-campaign-"))
    try:
        pristine = corruption.build(root)
        t = time.perf_counter()
        rows = corruption.run(pristine, corruption.plan(trials, seed=0), procs=2)
        return {"trials": trials, "seconds": time.perf_counter() - t, "table": corruption.table(rows), "rows": rows}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--trials", type=int, default=385)
    ap.add_argument("--skip-campaign", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict = {"environment": environment()}
    root = Path(tempfile.mkdtemp(prefix="mechwork-loader-bench-")) / "store"
    try:
        result["verify"] = bench_verify(root, args.gb)
        print(json.dumps(result["verify"], indent=1))
        result["mapping"] = bench_mapping(root)
        print(json.dumps(result["mapping"], indent=1))
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)
    if not args.skip_campaign:
        result["campaign"] = bench_campaign(args.trials)
        print(json.dumps(result["campaign"]["table"], indent=1))
    out = Path(__file__).resolve().parent / "results" / "loader.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
