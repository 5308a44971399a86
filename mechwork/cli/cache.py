"""``mechwork cache collect|info``: collect activations to disk, describe a store."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .options import Opt, add_options, command, given, group, shared

EPILOG_COLLECT = """examples:
  mechwork cache collect toy-mixed --sites resid_post.1 z.2 --tokens 200000 --out acts/
  mechwork cache collect toy-mixed --sites resid_post.3 --tokens 50000 --source task:ioi --dtype bfloat16 --out ioi/
  mechwork cache collect ./my-gpt2 --sites blocks.6.hook_resid_post --tokens 1e6 --source texts.jsonl --out gpt2-acts/
  mechwork cache collect toy-mixed --sites resid_post.1 z.2 --tokens 200000 --out acts/ --resume   # after an interruption
"""


def register(sub: Any) -> None:
    from ..cache.collect import collect

    _, csub = group(
        sub,
        "cache",
        help="collect activations to a sharded on-disk store; describe a store",
        description="Activation caching: many sites in one forward pass, a memory-mapped store.",
    )
    c = command(
        csub,
        "collect",
        help="run a model over a token source and store activations",
        description="Run MODEL over a token source once and store the activations of every site.",
        examples=EPILOG_COLLECT,
        parents=[
            shared(
                "dtype",
                "device",
                "backend",
                help={
                    "dtype": "storage dtype: float32, float16, bfloat16 (default: the model's)",
                    "device": "device of the model: cpu, cuda, cuda:1 (default: CUDA if available)",
                },
            )
        ],
        func=_collect,
    )
    c.add_argument("model", help="shipped model name, model folder or hub name (see `mechwork zoo list`)")
    c.add_argument(
        "--sites",
        nargs="+",
        required=True,
        metavar="SITE",
        help="hook names, aliases or patterns, e.g. resid_post.1 z.2 blocks.3.mlp.hook_post 'resid_post.*'",
    )
    c.add_argument(
        "--tokens",
        type=float,
        default=None,
        metavar="N",
        help="number of tokens (rows) to collect; 1e6 style accepted (default: the whole source)",
    )
    c.add_argument("--out", required=True, type=Path, help="output folder")
    c.add_argument(
        "--source",
        default="corpus",
        help="'corpus' (the generated language, default), 'task:NAME' (ioi, induction, gender, style) "
        "or a .txt/.jsonl/.safetensors/.npy file",
    )
    add_options(
        c,
        collect,
        [
            Opt("batch_size", metavar="N"),
            Opt("context", metavar="N"),
            Opt(
                "packing",
                help="concat: documents back to back (default for causal models); pad: one document per padded "
                "window with an attention mask (the default and only choice for encoders such as MiniLM)",
            ),
            Opt("bos", help="start documents and windows with BOS (default: the model family's convention)"),
            Opt("shard_tokens", metavar="N", help="rows per shard file (default: about 256 MiB)"),
            Opt("progress", flag="quiet", help="no progress bar"),
        ],
    )
    c.add_argument("--model-dtype", default=None, help="dtype the model is loaded in (default float32)")
    c.add_argument("--autocast", action="store_true", help="run the forward pass under bfloat16 autocast")
    c.add_argument("--seed", type=int, default=0, help="seed of generated sources (default 0)")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_options(c.add_mutually_exclusive_group(), collect, ["resume", "overwrite"])

    command(
        csub,
        "info",
        help="describe an activation store",
        description="Check an activation store against its manifest and describe it.",
        examples=["mechwork cache info acts/"],
        parents=[shared("json", help={"json": "print the manifest (with its statistics summary) as JSON"})],
        func=_info,
    ).add_argument("path", type=Path, help="store folder")


def _source(spec: str, seed: int) -> Any:
    from ..core.errors import ConfigError
    from ..data.sources import named_source

    src = named_source(spec, seed)
    if isinstance(src, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"--source {spec!r}: expected 'corpus', 'task:NAME' or an existing file")
        return path
    return src


def _collect(args: argparse.Namespace) -> int:
    import torch

    from .. import load_model
    from ..cache import collect
    from ..core.errors import ConfigError

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_tokens = None
    if args.tokens is not None:
        if args.tokens != int(args.tokens) or args.tokens < 1:
            raise ConfigError(f"--tokens must be a positive whole number, got {args.tokens}")
        n_tokens = int(args.tokens)
    model = load_model(args.model, device=args.device, dtype=args.model_dtype, backend=args.backend)
    source = _source(args.source, args.seed)
    t0 = time.perf_counter()
    store = collect(
        model,
        source,
        args.sites,
        out=args.out,
        n_tokens=n_tokens,
        dtype=args.dtype,
        seed=args.seed,
        autocast=True if args.autocast else None,
        **given(args, collect),
    )
    dt = time.perf_counter() - t0
    print(
        f"{store.n_tokens:,} tokens x {len(store.sites)} sites ({store.nbytes / 1e9:.3f} GB {store.manifest.dtype}) "
        f"in {dt:.1f} s -> {store.path}"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..cache import ActivationStore

    store = ActivationStore.open(args.path, partial=True)
    m = store.manifest
    size = sum(f.stat().st_size for f in Path(args.path).rglob("*") if f.is_file())
    if args.json:
        print(json.dumps({**m.to_dict(), "path": str(store.path), "bytes_on_disk": size}, indent=2))
        return 0
    print(f"store      {store.path}")
    print(f"status     {'complete' if m.complete else 'UNFINISHED (resume with --resume)'}")
    print(f"model      {m.model_spec}  (fingerprint {m.fingerprint})")
    print(
        f"tokens     {m.n_tokens:,} in {len(m.shards)} shard(s) of up to {m.shard_tokens:,} rows; context {m.context}, "
        f"bos {m.bos}"
    )
    print(f"source     {m.source} (packing {m.packing})")
    print(f"dtype      {m.dtype}; {size / 1e9:.3f} GB on disk; mechwork {m.mechwork_version}")
    print()
    rows = []
    for e in m.sites:
        st = store.stats(e.name)
        rows.append(
            (
                e.name,
                e.alias,
                "x".join(map(str, e.shape)),
                f"{st['mean_norm']:.4g}",
                f"{st['rms_norm']:.4g}",
                f"{float(st['std'].mean()):.4g}",
                f"{max(float(st['max'].max()), -float(st['min'].min())):.4g}",
            )
        )
    head = ("site", "alias", "shape", "mean_norm", "rms_norm", "mean_std", "max_abs")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0
