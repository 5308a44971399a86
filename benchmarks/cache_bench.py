"""Activation caching speed: mechwork ``collect`` vs the bare forward pass vs SAELens's CacheActivationsRunner.

On a random-init GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072, context 128; the
weights do not matter for speed) this measures, in one run:

(a) the bare forward pass to the last needed layer (``model(tokens, stop_at_layer=L)``, inference mode);
(b) ``mechwork.cache.collect`` to disk for one site and for all 12 residual sites (fsync'ed shards, stats);
(c) SAELens's ``CacheActivationsRunner`` on the same tokens: one run for the one site, and one run per site for
    every residual site (the runner writes one hook per run; SAELens's *training* ``ActivationsStore`` does read
    several hooks in one pass, but it does not write a cache). It always loads its model by name
    (``sae_lens.load_model``) and has only ``override_dataset``, so this script -- and only this script --
    replaces the ``load_model`` that ``sae_lens.cache_activations_runner`` calls with a function returning the
    same in-memory model, and passes the same tokens as a pretokenized ``datasets.Dataset``;
(d) shuffled read throughput of ``store.batches`` (one epoch, warm page cache), in GB/s, on a store of
    ``--read-tokens`` rows of four d_model sites (cheap to collect: they come before block 0's attention).

Forward, collect and SAELens runs are interleaved and repeated (``--repeat``, default 3); every ratio is the
median over the repeats of the ratio within one repeat (paired runs), because the machine is shared and noisy. Usage::

    python benchmarks/cache_bench.py                    # CPU, float32 storage
    python benchmarks/cache_bench.py --shapes 4l-512           # the fast shape only
    python benchmarks/cache_bench.py --device cuda --dtype bfloat16 --tokens 1048576 --tokens-all 262144
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import print_table, write_results  # noqa: E402

CONTEXT = 128
SHAPES = {
    # the benchmark model: GPT-2 small's shape
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, site_layer=5),
    # the model of the SAELens measurement (4 layers, d_model 512): a fast forward exposes fixed costs
    "4l-512": dict(n_layers=4, d_model=512, n_heads=8, d_head=64, d_mlp=2048, site_layer=1),
}
SITE_LAYER = 5  # kept for callers: the single site of the gpt2-small shape (blocks.5.hook_resid_post)


def build_model(device: str, shape: str = "gpt2-small") -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    dims = {k: v for k, v in SHAPES[shape].items() if k != "site_layer"}
    cfg = HookedTransformerConfig(
        **dims, n_ctx=CONTEXT, d_vocab=50257, act_fn="gelu_new", normalization_type="LN", seed=0, device=device
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg).eval().to(device)
    model.mechwork_spec = f"random-init {shape}"
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def bare_forward(model: Any, tokens: torch.Tensor, stop: int, batch: int, device: str, autocast: bool) -> None:
    ac = (
        torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), ac:
        for i in range(0, tokens.shape[0], batch):
            model(tokens[i : i + batch].to(device, non_blocking=True), stop_at_layer=stop)


def disk_bandwidth(folder: Path, nbytes: int) -> float:
    """Sequential write bandwidth with fsync (GB/s), the ceiling of a disk-bound collection."""
    buf = memoryview(bytearray(os.urandom(1 << 20)) * 64)  # 64 MiB
    path = folder / "bandwidth.bin"
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < nbytes:
            written += f.write(buf)
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return written / dt / 1e9


def saelens_run(
    model: Any,
    tokens: torch.Tensor,
    folder: Path,
    device: str,
    batch: int,
    layer: int,
    *,
    keep: bool = False,
    default_buffer: bool = False,
) -> float:
    """Seconds for SAELens's CacheActivationsRunner on the same model and tokens (one site).

    The buffer is sized to hold exactly the requested tokens: with its default ``buffer_size_gb=2.0`` the
    runner fills (and writes) a whole 2 GB buffer whatever ``training_tokens`` says, cycling the dataset --
    ``default_buffer=True`` measures that instead, and the result is divided by the tokens it *asked* for.
    """
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens.config import CacheActivationsRunnerConfig

    n = tokens.numel()
    batch = min(batch, tokens.shape[0])
    if tokens.shape[0] % batch:
        raise SystemExit(f"--tokens must be a multiple of {batch * CONTEXT} (SAELens drops partial batches)")
    d_in = int(model.cfg.d_model)
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    cfg = CacheActivationsRunnerConfig(
        dataset_path="local-random-tokens",
        model_name="random-gpt2-small",
        model_batch_size=batch,
        hook_name=f"blocks.{layer}.hook_resid_post",
        d_in=d_in,
        training_tokens=n,
        context_size=CONTEXT,
        new_cached_activations_path=str(folder),
        dtype="float32",
        device=device,
        buffer_size_gb=2.0 if default_buffer else (n * d_in * 4 + 1024) / 1e9,  # one buffer holding exactly the tokens
        prepend_bos=False,
        streaming=False,
    )
    original = car.load_model
    car.load_model = lambda *a, **k: model  # the runner cannot be given a model: hand it ours instead of a download
    try:
        runner = car.CacheActivationsRunner(cfg, override_dataset=ds)
        dt = timed(runner.run, device)
    finally:
        car.load_model = original
    cached = datasets.load_from_disk(str(folder))
    if not default_buffer:
        assert len(cached) * CONTEXT == n, f"SAELens cached {len(cached)} sequences, expected {n // CONTEXT}"
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return dt


def saelens_read(folder: Path, hook: str, batch_seqs: int) -> float:
    """GB/s of SAELens's way of reading its cache for training: sequential batches of sequences from the HF
    dataset in torch format (its mixing buffer then shuffles in memory), float32."""
    import datasets

    ds = datasets.load_from_disk(str(folder))
    ds.set_format("torch", columns=[hook])
    for i in range(0, len(ds), batch_seqs):  # warm
        ds[i : i + batch_seqs][hook]
    t0 = time.perf_counter()
    nbytes = 0
    for _ in range(3):
        for i in range(0, len(ds), batch_seqs):
            nbytes += ds[i : i + batch_seqs][hook].float().numel() * 4
    return nbytes / (time.perf_counter() - t0) / 1e9


READ_SITES = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized"]


def read_store(model: Any, folder: Path, n_tokens: int, dtype: str, batch: int) -> Any:
    """A store large enough to time reads: four d_model sites computed before block 0's attention, so that
    collecting them costs little even on a CPU (the pass stops right after the last of them)."""
    from mechwork.cache import collect

    tokens = torch.randint(0, 50257, (n_tokens // CONTEXT, CONTEXT), generator=torch.Generator().manual_seed(1))
    return collect(
        model, tokens, READ_SITES, out=folder, batch_size=batch, bos=False, dtype=dtype, progress=False, overwrite=True
    )


def read_throughput(store: Any, sites: Any, batch: int, device: str, prefetch: int) -> tuple[float, float]:
    """(GB/s, seconds) of one shuffled epoch of ``store.batches(sites, batch)`` delivered to ``device`` (float32)."""
    names = [sites] if isinstance(sites, str) else list(sites)
    row_bytes = sum(store.d(s) for s in names) * 4
    for _ in store.batches(sites, batch, seed=99, device=device, prefetch=prefetch):  # warm page cache and mappings
        pass
    t0 = time.perf_counter()
    n = 0
    for b in store.batches(sites, batch, seed=1, device=device, prefetch=prefetch):
        n += (b if isinstance(b, torch.Tensor) else next(iter(b.values()))).shape[0]
    sync(device)
    dt = time.perf_counter() - t0
    return n * row_bytes / dt / 1e9, dt


def measure_shape(shape: str, args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Forward, collect (1 site, every residual site) and SAELens, interleaved ``args.repeat`` times."""
    from mechwork.cache import collect

    dev = args.device
    model = build_model(dev, shape)
    n_layers, layer = SHAPES[shape]["n_layers"], SHAPES[shape]["site_layer"]
    n_seq = max(args.tokens, args.tokens_all) // CONTEXT
    tokens = torch.randint(0, 50257, (n_seq, CONTEXT), generator=torch.Generator().manual_seed(0))
    all_name = f"{n_layers} resid sites"
    configs = {
        "1 site": ([f"blocks.{layer}.hook_resid_post"], layer + 1, args.tokens // CONTEXT),
        all_name: ([f"blocks.{i}.hook_resid_post" for i in range(n_layers)], n_layers, args.tokens_all // CONTEXT),
    }
    ac = True if args.autocast else None
    bare_forward(model, tokens[: args.batch], n_layers, args.batch, dev, args.autocast)  # warm-up
    times: dict[str, dict[str, list[float]]] = {k: {"forward": [], "collect": [], "saelens": []} for k in configs}
    stores: dict[str, Any] = {}
    for r in range(args.repeat):
        for name, (sites, stop, seqs) in configs.items():
            toks = tokens[:seqs]
            t = times[name]
            t["forward"].append(
                timed(lambda toks=toks, stop=stop: bare_forward(model, toks, stop, args.batch, dev, args.autocast), dev)
            )
            out = work / f"{shape}_{name.replace(' ', '_')}"
            t["collect"].append(
                timed(
                    lambda name=name, toks=toks, sites=sites, out=out: stores.__setitem__(
                        name,
                        collect(
                            model,
                            toks,
                            sites,
                            out=out,
                            batch_size=args.batch,
                            bos=False,
                            dtype=args.dtype,
                            progress=False,
                            overwrite=True,
                            autocast=ac,
                        ),
                    ),
                    dev,
                )
            )
            msg = f"{shape} round {r}: {name}: forward {t['forward'][-1]:.2f}s collect {t['collect'][-1]:.2f}s"
            if not args.no_saelens:  # the same tokens as mechwork; CacheActivationsRunner writes one hook per run
                t["saelens"].append(
                    sum(
                        saelens_run(
                            model,
                            toks,
                            work / f"saelens_{'one' if name == '1 site' else 'all'}_{i}",
                            dev,
                            args.batch,
                            int(site.split(".")[1]),
                            keep=name == "1 site" and r == args.repeat - 1,
                        )
                        for i, site in enumerate(sites)
                    )
                )
                msg += f" saelens {t['saelens'][-1]:.2f}s ({len(sites)} run(s), {seqs * CONTEXT} tokens)"
            print(msg, flush=True)

    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {"model": f"random-init {shape}: {SHAPES[shape]}, context {CONTEXT}"}
    for name, (_sites, _stop, seqs) in configs.items():
        n, t = seqs * CONTEXT, times[name]
        f, c = statistics.median(t["forward"]), statistics.median(t["collect"])
        paired = statistics.median(a / b for a, b in zip(t["forward"], t["collect"]))
        gb = stores[name].nbytes / 1e9
        res[name] = {
            "tokens": n,
            "forward_s": t["forward"],
            "collect_s": t["collect"],
            "forward_tok_s": n / f,
            "collect_tok_s": n / c,
            "ratio_of_medians": f / c,
            "ratio_paired_median": paired,
            "gb_written": gb,
        }
        target = 0.8 if name == "1 site" else 0.7
        rows.append(
            {
                "model": shape,
                "measure": f"bare forward to layer {stop}",
                "sites": name,
                "tokens": n,
                "seconds": f,
                "tok/s": n / f,
                "ratio": 1.0,
            }
        )
        rows.append(
            {
                "model": shape,
                "measure": f"mechwork collect to disk ({args.dtype})",
                "sites": name,
                "tokens": n,
                "seconds": c,
                "tok/s": n / c,
                "ratio": paired,
                "GB": gb,
                "target": f">= {target}",
            }
        )
        if t["saelens"]:  # ratios: medians over the repeats of per-repeat ratios (paired runs)
            sl = statistics.median(t["saelens"])
            sl_ratio = statistics.median(f_ / s_ for s_, f_ in zip(t["saelens"], t["forward"]))
            speedup = statistics.median(s_ / c_ for s_, c_ in zip(t["saelens"], t["collect"]))
            key = "saelens" if name == "1 site" else "saelens_all"
            res[key] = {
                "tokens": n,
                "seconds": t["saelens"],
                "runs": len(sites),
                "tok_s": n / sl,
                "ratio_to_forward": sl_ratio,
                "mechwork_speedup": speedup,
            }
            runs = "" if len(sites) == 1 else f", {len(sites)} runs (one hook per run)"
            rows.append(
                {
                    "model": shape,
                    "measure": f"SAELens CacheActivationsRunner (float32){runs}",
                    "sites": name,
                    "tokens": n,
                    "seconds": sl,
                    "tok/s": n / sl,
                    "ratio": sl_ratio,
                }
            )
            rows.append(
                {
                    "model": shape,
                    "measure": "mechwork collect / SAELens",
                    "sites": name,
                    "ratio": speedup,
                    "target": ">= 25",
                }
            )
    if args.saelens_default_buffer and not args.no_saelens:
        n_sl = args.tokens // CONTEXT
        dt = saelens_run(model, tokens[:n_sl], work / "saelens_default", dev, args.batch, layer, default_buffer=True)
        res["saelens_default_buffer"] = {"tokens_requested": n_sl * CONTEXT, "seconds": dt}
        rows.append(
            {
                "model": shape,
                "measure": "SAELens, default buffer_size_gb=2 (per token asked)",
                "sites": "1 site",
                "tokens": n_sl * CONTEXT,
                "seconds": dt,
                "tok/s": n_sl * CONTEXT / dt,
            }
        )
    if args.read_tokens and shape == args.shapes.split(",")[0]:
        rstore = read_store(model, work / "reads", args.read_tokens, args.dtype, args.batch)
        res["reads"] = {"tokens": rstore.n_tokens, "gb": rstore.nbytes / 1e9}
        for label, sites in (("1 site", READ_SITES[0]), (f"{len(READ_SITES)} sites", READ_SITES)):
            for prefetch in (0, 2):
                gbs, dt = read_throughput(rstore, sites, 4096, dev, prefetch)
                res["reads"][f"{label}, prefetch {prefetch}"] = gbs
                rows.append(
                    {
                        "model": shape,
                        "measure": f"store.batches shuffled 4096 rows, prefetch {prefetch}",
                        "sites": label,
                        "tokens": rstore.n_tokens,
                        "seconds": dt,
                        "GB/s": gbs,
                        "target": ">= 1 GB/s",
                    }
                )
        shutil.rmtree(work / "reads", ignore_errors=True)
        if (work / "saelens_one_0").is_dir():
            gbs = saelens_read(work / "saelens_one_0", f"blocks.{layer}.hook_resid_post", 4096 // CONTEXT)
            res["reads"]["saelens sequential"] = gbs
            rows.append(
                {
                    "model": shape,
                    "measure": "SAELens cache read (sequential, HF datasets)",
                    "sites": "1 site",
                    "tokens": configs["1 site"][2] * CONTEXT,
                    "GB/s": gbs,
                }
            )
            rows.append(
                {
                    "model": shape,
                    "measure": "mechwork shuffled / SAELens sequential read",
                    "sites": "1 site",
                    "ratio": res["reads"]["1 site, prefetch 0"] / gbs,
                }
            )
    shutil.rmtree(work / "saelens_one_0", ignore_errors=True)
    for name in configs:
        res[name]["bytes_per_token"] = stores[name].nbytes / stores[name].n_tokens
    return rows, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gpt2-small,4l-512", help=f"comma-separated model shapes from {sorted(SHAPES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="mechwork storage dtype")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast for the forward passes (GPU)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per measurement, one site (all three tools)")
    p.add_argument(
        "--tokens-all", type=int, default=8192, help="tokens per measurement, every residual site (all three tools)"
    )
    p.add_argument("--no-saelens", action="store_true", help="skip SAELens")
    p.add_argument(
        "--saelens-default-buffer",
        action="store_true",
        help="also time SAELens with its default buffer_size_gb=2.0 (it then processes ~1M tokens: minutes)",
    )
    p.add_argument("--read-tokens", type=int, default=131072, help="rows of the store the read throughput is timed on")
    p.add_argument("--batch", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine 2 threads make OpenMP spin and the "
        "timings swing 2-5x between identical runs)",
    )
    p.add_argument("--workdir", default=None, help="folder for the stores (default: a temporary folder)")
    p.add_argument("--results", default=None, help="folder for the JSON (default benchmarks/results)")
    p.add_argument("--name", default="cache")
    p.add_argument(
        "--quick", action="store_true", help="a one-minute smoke run with tiny sizes (numbers not meaningful)"
    )
    p.add_argument("--no-write", action="store_true", help="print the table, write no JSON")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.tokens_all, args.repeat, args.read_tokens = 1024, 512, 1, 16384
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cache_bench."))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"config": vars(args)}
    for shape in args.shapes.split(","):
        r, res = measure_shape(shape, args, work)
        rows += r
        results[shape] = res
    bw = disk_bandwidth(work, 1 << 30)
    results["disk_write_gb_s"] = bw
    rows.append({"measure": "disk write bandwidth (1 GiB, fsync)", "GB/s": bw})
    for shape in args.shapes.split(","):
        for res in results[shape].values():
            if isinstance(res, dict) and "bytes_per_token" in res:
                ceiling = min(res["forward_tok_s"], bw * 1e9 / res["bytes_per_token"])
                res["ceiling_tok_s"], res["ratio_to_ceiling"] = ceiling, res["collect_tok_s"] / ceiling
    results["loadavg_before"], results["loadavg_after"] = load_before, os.getloadavg()
    results["wall_s"] = time.perf_counter() - t0
    print_table(
        rows,
        ["model", "measure", "sites", "tokens", "seconds", "tok/s", "ratio", "GB", "GB/s", "target"],
        title=f"activation caching on {args.device} ({args.threads} torch threads; load average "
        f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}); ratios are medians of paired runs",
    )
    if not args.no_write:
        write_results(args.name, {"results": results, "rows": rows}, args.results)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
