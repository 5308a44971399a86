"""``mechwork info MODEL``: architecture, parameter count and every activation site with its shape."""

from __future__ import annotations

import argparse
import json

from .options import command, shared


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "info",
        help="describe a model: architecture, parameters, activation sites",
        description="Load MODEL and print its architecture, parameter count and every activation site "
        "(full hook name, short alias, per-token shape).",
        examples=["mechwork info toy-mixed", "mechwork info ./my-gpt2-folder --backend bridge --json"],
        parents=[shared("backend", "device", "json", device="cpu", help={"json": "print JSON instead of a table"})],
        func=run,
    )
    p.add_argument(
        "model",
        nargs="?",
        default="toy-mixed",
        help="shipped name, mechwork/HF folder, or hub name (default: toy-mixed)",
    )
    p.add_argument("--kind", default=None, help="only list sites of this kind (resid_post, z, mlp_post, ...)")


def describe(model) -> dict:
    from .. import sites

    cfg = model.cfg
    return {
        "spec": getattr(model, "mechwork_spec", None),
        "backend": type(model).__name__,
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "n_heads": int(cfg.n_heads),
        "d_head": int(cfg.d_head),
        "d_mlp": None if getattr(cfg, "attn_only", False) else getattr(cfg, "d_mlp", None),
        "n_ctx": int(cfg.n_ctx),
        "d_vocab": int(cfg.d_vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sites": [
            {
                "name": s.name,
                "alias": s.alias,
                "shape": list(s.shape) if s.shape else None,
                "layer": s.layer,
                "kind": s.kind,
                "gate": s.gate,
            }
            for s in sites(model)
        ],
    }


def run(args: argparse.Namespace) -> int:
    from .. import load_model

    info = describe(load_model(args.model, device=args.device, backend=args.backend))
    if args.kind:
        info["sites"] = [s for s in info["sites"] if s["kind"] == args.kind]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    arch = {k: v for k, v in info.items() if k != "sites"}
    for k, v in arch.items():
        print(f"{k:>11}: {v:,}" if isinstance(v, int) else f"{k:>11}: {v}")
    print(f"\n{len(info['sites'])} sites (name | alias | shape per token):")
    width = max(len(s["name"]) for s in info["sites"]) if info["sites"] else 0
    for s in info["sites"]:
        shape = "x".join(str(x) for x in s["shape"]) if s["shape"] else "?"
        gate = f"  (needs cfg.{s['gate']}; enabled on use)" if s["gate"] else ""
        print(f"  {s['name']:<{width}}  {s['alias']:<20} {shape}{gate}")
    return 0
