"""``mechwork zoo``: list the shipped models, train one from scratch, re-measure its card."""

from __future__ import annotations

import argparse
import json

from .options import Opt, add_options, command, given, group, shared


def register(sub: argparse._SubParsersAction) -> None:
    from ..models.train import train_zoo

    _, zsub = group(
        sub,
        "zoo",
        help="the shipped models: list, train from scratch, evaluate",
        description="mechwork ships small models trained on its generated language, whose ground truth is known.",
        examples=[
            "mechwork zoo list",
            "mechwork zoo train toy-induction-2l --out /tmp/ind2l",
            "mechwork zoo eval toy-mixed",
        ],
    )
    command(
        zsub,
        "list",
        help="list shipped models with their card metrics",
        examples=["mechwork zoo list --json"],
        parents=[shared("json")],
        func=run_list,
    )
    tr = command(
        zsub,
        "train",
        help="train a zoo model from scratch (deterministic: one thread, fixed seeds)",
        description="Train NAME from scratch on the generated corpus with its registered recipe and write the model "
        "folder (config.json, model.safetensors, tokenizer/, card.json with metrics and wall time). Without --out the "
        "shipped copy inside the package is replaced.",
        examples=["mechwork zoo train toy-induction-2l --out /tmp/ind2l --steps 200   # a quick try"],
        func=run_train,
    )
    tr.add_argument("name", help="zoo model name (see `mechwork zoo list`)")
    add_options(
        tr,
        train_zoo,
        [
            Opt("out", help="output folder (default: the package's zoo folder)"),
            Opt("steps", help="override the number of training steps (quick tries)"),
        ],
    )
    ev = command(
        zsub,
        "eval",
        help="re-measure a model's quality on fresh held-out prompts",
        examples=["mechwork zoo eval toy-mixed --quick"],
        func=run_eval,
    )
    ev.add_argument("name", help="zoo model name or model folder")
    ev.add_argument("--quick", action="store_true", help="fewer prompts")


def run_list(args: argparse.Namespace) -> int:
    from ..core.io import read_json
    from ..models.zoo import DEFAULT, ENTRIES

    rows = []
    for name, e in ENTRIES.items():
        card_path = e.path / "card.json"
        card = read_json(card_path) if card_path.is_file() else {}
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT,
                "description": e.description,
                "trained": bool(card),
                "metrics": card.get("metrics"),
                "wall_seconds": card.get("wall_seconds"),
                "steps": card.get("steps"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        flag = " (default)" if r["default"] else ""
        print(f"{r['name']}{flag}: {r['description']}")
        if not r["trained"]:
            print("    not trained yet: run `mechwork zoo train " + r["name"] + "`")
            continue
        print(f"    trained {r['steps']} steps in {r['wall_seconds']} s")
        for task, m in (r["metrics"] or {}).items():
            vals = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
            print(f"    {task}: {vals}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..models.train import train_zoo

    path = train_zoo(args.name, **given(args, train_zoo))
    print(f"wrote {path}")
    return run_eval_path(path, quick=True, measured=True)


def run_eval(args: argparse.Namespace) -> int:
    return run_eval_path(args.name, quick=args.quick)


def run_eval_path(spec, *, quick: bool, measured: bool = False) -> int:
    from ..models.load import load_model
    from ..models.quality import model_quality

    if measured:
        from pathlib import Path

        from ..core.io import read_json

        metrics = read_json(Path(spec) / "card.json").get("metrics", {})
    else:
        metrics = model_quality(load_model(spec, device="cpu"), quick=quick)
    print(json.dumps(metrics, indent=2))
    return 0
