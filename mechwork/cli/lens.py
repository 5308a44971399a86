"""``mechwork lens train MODEL --out DIR``: train a tuned lens and save it as an artefact."""

from __future__ import annotations

import argparse
import json

from .options import add_options, command, given, group, shared


def register(sub: argparse._SubParsersAction) -> None:
    from ..projection.tuned import TunedLensConfig

    _, inner = group(
        sub,
        "lens",
        help="tuned lens: train an affine translator per layer (read it with `mechwork project MODEL lens --tuned`)",
        examples=["mechwork lens train toy-mixed --out lenses/toy-mixed --steps 300"],
    )
    p = command(
        inner,
        "train",
        help="train a tuned lens on the model's own activations (KL to the final layer) and save it",
        description="Train one zero-initialised affine translator per residual state but the last, by KL(final || "
        "lens) on the model's own activations, streamed from --source (default for the shipped toys: the generated "
        "corpus) or read from an activation cache (--cache, holding resid_pre.0 and every resid_post). Saves DIR with "
        "cfg.json + lens.safetensors, then prints the per-layer KL of the logit lens and the tuned lens on held-out "
        "text.",
        examples=[
            "mechwork lens train toy-mixed --out lenses/toy-mixed",
            "mechwork lens train ./my-gpt2 --source corpus.txt --out lenses/gpt2 --steps 500 --optimizer sgd --lr 1.0",
            "mechwork lens train toy-mixed --cache acts/ --out lenses/toy-mixed --batch-size 4096",
        ],
        parents=[shared("backend", "device", "json", device="cpu")],
        func=run,
    )
    p.add_argument("model", help="shipped name, mechwork/HF folder")
    p.add_argument("--out", required=True, help="folder to write the lens to")
    p.add_argument("--source", default=None, help="text file (.txt/.jsonl) or token file streamed through the model")
    p.add_argument("--cache", default=None, help="activation cache folder to train from instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_options(p, TunedLensConfig, [f for f in TunedLensConfig.__dataclass_fields__])


def run(args: argparse.Namespace) -> int:
    from .. import load_model
    from ..projection.tuned import TunedLensConfig, compare_lenses, held_out_tokens, train_tuned_lens

    model = load_model(args.model, device=args.device, backend=args.backend)
    cfg = TunedLensConfig().replace(**given(args, TunedLensConfig))
    store = None
    if args.cache:
        from ..cache import ActivationStore

        store = ActivationStore.open(args.cache)
    lens = train_tuned_lens(model, args.source, store=store, cfg=cfg, progress=not args.no_progress)
    lens.save(args.out)
    table = compare_lenses(model, held_out_tokens(model, args.source), lens)
    if args.json:
        print(json.dumps({"out": args.out, "meta": lens.meta, "comparison": table.to_dict(orient="list")}, indent=2))
    else:
        print(f"tuned lens written to {args.out} ({lens.meta['steps_done']} steps, {lens.meta['tokens_seen']} tokens)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
