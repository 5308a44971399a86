"""``mechwork erase``: fit a concept eraser at a site of a model, evaluate it, or sweep the layers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import Opt, add_options, command, given, group, key_values, shared

_METHOD_HELP = "leace (closed form, default), inlp (iterative nullspace projection) or rlace (adversarial, rank k)"


def register(sub: argparse._SubParsersAction) -> None:
    from ..erasure.inlp import INLP
    from ..erasure.rlace import RLACE

    _, g = group(
        sub,
        "erase",
        help="concept erasure: fit an eraser (LEACE, INLP, R-LACE), evaluate it, sweep the layers",
        description="Fit a linear concept eraser at one site of a model from a labelled task (gender by default), "
        "save it as an artefact folder, and judge it: fresh linear and MLP probes on erased held-out activations vs "
        "the majority rate, distortion, and the model's behaviour with the eraser hooked in.",
        examples=[
            "mechwork erase fit toy-mixed --task gender --site resid_pre.1 --method leace --out out/gender-leace",
            "mechwork erase eval out/gender-leace",
            "mechwork erase sweep toy-mixed --methods leace,inlp --out out/gender-sweep",
        ],
    )
    data = _data_args()

    f = command(
        g,
        "fit",
        help="fit an eraser at one site and save it",
        examples=["mechwork erase fit toy-mixed --task gender --site resid_pre.1 --method rlace --rank 1 --out out/e"],
        parents=[data, shared("seed")],
        func=run_fit,
    )
    f.add_argument("model", help="model spec (e.g. toy-mixed, a mechwork or Hugging Face folder)")
    f.add_argument("--site", required=True, help="activation site, e.g. resid_pre.1 or blocks.1.hook_resid_pre")
    f.add_argument("--out", required=True, help="artefact folder to write")
    f.add_argument("--method", default="leace", choices=["leace", "inlp", "rlace"], help=_METHOD_HELP)
    add_options(f, RLACE, [Opt("rank", help="rlace: dimensions removed")], ns="method")
    add_options(f, INLP, [Opt("n_iter", help="inlp: most rounds")], ns="method")
    f.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option of the method, e.g. --option shrinkage=true --option schedule=reference",
    )
    f.add_argument("--n", type=int, default=2000, help="prompts to fit on (train split; default 2000)")
    f.add_argument("--no-eval", action="store_true", help="skip the evaluation written to card.json")

    e = command(
        g,
        "eval",
        help="evaluate a saved eraser: probes, distortion, behaviour",
        examples=["mechwork erase eval out/gender-leace --n 1000 --json"],
        parents=[shared("backend", "seed", "json", seed=1, help={"json": "print the report as JSON"})],
        func=run_eval,
    )
    e.add_argument("dir", help="eraser folder written by `mechwork erase fit`")
    e.add_argument("--model", default=None, help="model spec (default: the one the eraser was fitted on)")
    e.add_argument("--task", default=None, help="labelled task (default: the one it was fitted on)")
    e.add_argument("--n", type=int, default=1000, help="held-out prompts for the probes (test split; default 1000)")
    e.add_argument("--behaviour-n", type=int, default=256, help="prompts per task for the behaviour metrics")

    s = command(
        g,
        "sweep",
        help="fit and judge erasers at every residual site; write JSON and a figure",
        examples=["mechwork erase sweep toy-mixed --methods leace,inlp,rlace --out out/sweep"],
        parents=[data, shared("seed")],
        func=run_sweep,
    )
    s.add_argument("model")
    s.add_argument("--out", required=True, help="folder for sweep.json and sweep.html")
    s.add_argument("--methods", default="leace", help="comma-separated methods (default: leace)")
    s.add_argument("--sites", default=None, help="comma-separated sites (default: every residual-stream point)")
    s.add_argument("--n", type=int, default=2000, help="prompts to fit on")
    s.add_argument("--n-eval", type=int, default=600, help="held-out prompts for the probes")
    s.add_argument("--behaviour-n", type=int, default=256)


def _data_args() -> argparse.ArgumentParser:
    """Where the labelled activations come from (shared by fit and sweep)."""
    p = shared("backend", "device", device="cpu", help={"device": "device of the model"})
    p.add_argument("--task", default="gender", help="labelled task (default: gender)")
    p.add_argument(
        "--positions",
        default="all",
        choices=["all", "content", "last"],
        help="token rows that carry the prompt's label (default: all)",
    )
    p.add_argument(
        "--stratify",
        default=None,
        choices=["position"],
        help="leace: remove the concept within every position, not on average over positions",
    )
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {**key_values(args.option, flag="--option"), **given(args, "method")}


def _summary(report: dict[str, Any]) -> str:
    pr = report["probes"]
    lines = [
        f"site {report['site']}  method {report['method']}  rank {pr['rank']}  fit {pr['fit_seconds']:.2f}s",
        f"probes on {pr['n']} held-out rows (majority {pr['majority']:.3f}):",
    ]
    for kind in ("linear", "mlp"):
        if f"{kind}_accuracy" in pr:
            lines.append(
                f"  {kind:<6} accuracy {pr.get(f'{kind}_accuracy_before', float('nan')):.3f} -> {pr[f'{kind}_accuracy']:.3f}"
            )
    lines.append(
        f"distortion: mean squared change {pr['mse']:.4g} (mean squared norm {pr['mean_sq_norm']:.4g}), "
        f"whitened {pr['mse_whitened']:.4g}"
    )
    if "behaviour_after" in report:
        lines.append("behaviour (accuracy, metric) clean -> eraser hooked:")
        for task, after in report["behaviour_after"].items():
            b = report["behaviour_before"][task]
            lines.append(
                f"  {task:<10} {b['accuracy']:.3f} -> {after['accuracy']:.3f}   {b['metric']:+.3f} -> {after['metric']:+.3f}"
            )
    return "\n".join(lines)


def _model(spec: str, backend: str, device: str = "cpu") -> Any:
    import torch

    from .. import load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_model(spec, device=device, backend=backend)


def run_fit(args: argparse.Namespace) -> int:
    import dataclasses

    from ..erasure import evaluate, fit

    model = _model(args.model, args.backend, args.device)
    eraser = fit(
        model,
        args.task,
        args.site,
        args.method,
        n=args.n,
        seed=args.seed,
        positions=args.positions,
        stratify=args.stratify,
        **_options(args),
    )
    print(f"fitted {eraser} on {eraser.config.n_samples} token rows in {eraser.config.fit_seconds:.2f}s")
    if not args.no_eval:
        report = evaluate(eraser, model, args.task, seed=args.seed + 1)
        eraser = dataclasses.replace(eraser, card={**eraser.card, "evaluation": report})
        print(_summary(report))
    out = eraser.save(args.out)
    print(f"wrote {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..core.io import atomic_write_json
    from ..erasure import Scrubber, evaluate, load

    eraser = load(args.dir)
    cfg = eraser.erasers[-1][1].config if isinstance(eraser, Scrubber) else eraser.config
    spec, task = args.model or cfg.model, args.task or cfg.task
    if not spec or not task:
        raise ConfigError(f"{args.dir} does not record its model/task; pass --model and --task")
    model = _model(spec, args.backend)
    report = evaluate(eraser, model, task, n=args.n, seed=args.seed, behaviour_n=args.behaviour_n)
    atomic_write_json(Path(args.dir) / "eval.json", report)
    print(json.dumps(report, indent=2) if args.json else _summary(report))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from ..core.io import atomic_write_json
    from ..erasure import layer_sweep, plot_sweep
    from ..viz import save_html

    model = _model(args.model, args.backend, args.device)
    sites = args.sites.split(",") if args.sites else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = layer_sweep(
        model,
        args.task,
        sites,
        methods,
        n_fit=args.n,
        n_eval=args.n_eval,
        behaviour_n=args.behaviour_n,
        fit_positions=args.positions,
        stratify=args.stratify,
        seed=args.seed,
        progress=True,
    )
    out = Path(args.out)
    atomic_write_json(out / "sweep.json", rows)
    save_html(
        plot_sweep(rows, concept_task=args.task, title=f"Erasing {args.task} in {args.model}"), out / "sweep.html"
    )
    cols = [
        "site",
        "label",
        "rank",
        "linear_accuracy_before",
        "linear_accuracy",
        "mlp_accuracy",
        "majority",
        f"{args.task}_accuracy",
        "ioi_accuracy",
        "induction_accuracy",
    ]
    print("  ".join(f"{c[:14]:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{_cell(r.get(c)):>14}" for c in cols))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.html'}")
    return 0


def _cell(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))
