"""``mechwork erase``: fit a concept eraser at a site of a model, evaluate it, or sweep the layers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_METHOD_HELP = "leace (closed form, default), inlp (iterative nullspace projection) or rlace (adversarial, rank k)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "erase",
        help="concept erasure: fit an eraser (LEACE, INLP, R-LACE), evaluate it, sweep the layers",
        description="Fit a linear concept eraser at one site of a model from a labelled task (gender by default), "
        "save it as an artefact folder, and judge it: fresh linear and MLP probes on erased held-out activations vs "
        "the majority rate, distortion, and the model's behaviour with the eraser hooked in.",
        epilog="examples:\n  mechwork erase fit toy-mixed --task gender --site resid_pre.1 --method leace --out out/gender-leace\n"
        "  mechwork erase eval out/gender-leace\n  mechwork erase sweep toy-mixed --methods leace,inlp --out out/gender-sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_subparsers(dest="erase_command", metavar="{fit,eval,sweep}")

    f = g.add_parser(
        "fit",
        help="fit an eraser at one site and save it",
        epilog="example:\n  mechwork erase fit toy-mixed --task gender --site resid_pre.1 --method rlace --rank 1 --out out/e",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("model", help="model spec (e.g. toy-mixed, a mechwork or Hugging Face folder)")
    f.add_argument("--site", required=True, help="activation site, e.g. resid_pre.1 or blocks.1.hook_resid_pre")
    f.add_argument("--out", required=True, help="artefact folder to write")
    f.add_argument("--method", default="leace", choices=["leace", "inlp", "rlace"], help=_METHOD_HELP)
    f.add_argument("--rank", type=int, default=None, help="rlace: dimensions removed (default 1)")
    f.add_argument("--n-iter", type=int, default=None, help="inlp: most rounds (default 20)")
    f.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option of the method, e.g. --option shrinkage=true --option schedule=reference",
    )
    _data_args(f)
    f.add_argument("--n", type=int, default=2000, help="prompts to fit on (train split; default 2000)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-eval", action="store_true", help="skip the evaluation written to card.json")
    f.set_defaults(func=run_fit)

    e = g.add_parser(
        "eval",
        help="evaluate a saved eraser: probes, distortion, behaviour",
        epilog="example:\n  mechwork erase eval out/gender-leace --n 1000 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("dir", help="eraser folder written by `mechwork erase fit`")
    e.add_argument("--model", default=None, help="model spec (default: the one the eraser was fitted on)")
    e.add_argument("--task", default=None, help="labelled task (default: the one it was fitted on)")
    e.add_argument("--backend", default="auto", choices=["auto", "hooked", "bridge"])
    e.add_argument("--n", type=int, default=1000, help="held-out prompts for the probes (test split; default 1000)")
    e.add_argument("--behaviour-n", type=int, default=256, help="prompts per task for the behaviour metrics")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=run_eval)

    s = g.add_parser(
        "sweep",
        help="fit and judge erasers at every residual site; write JSON and a figure",
        epilog="example:\n  mechwork erase sweep toy-mixed --methods leace,inlp,rlace --out out/sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("model")
    s.add_argument("--out", required=True, help="folder for sweep.json and sweep.html")
    s.add_argument("--methods", default="leace", help="comma-separated methods (default: leace)")
    s.add_argument("--sites", default=None, help="comma-separated sites (default: every residual-stream point)")
    _data_args(s)
    s.add_argument("--n", type=int, default=2000, help="prompts to fit on")
    s.add_argument("--n-eval", type=int, default=600, help="held-out prompts for the probes")
    s.add_argument("--behaviour-n", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_sweep)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _data_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--backend", default="auto", choices=["auto", "hooked", "bridge"])
    p.add_argument("--device", default="cpu", help="device of the model (default: cpu)")


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from ..core.errors import ConfigError

    opts: dict[str, Any] = {}
    for item in args.option:
        if "=" not in item:
            raise ConfigError(f"--option must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip().replace("-", "_")] = _parse_value(v.strip())
    if args.rank is not None:
        opts["rank"] = args.rank
    if args.n_iter is not None:
        opts["n_iter"] = args.n_iter
    return opts


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
    from ..erasure import evaluate, load

    eraser = load(args.dir)
    cfg = eraser.erasers[-1][1].config if hasattr(eraser, "erasers") else eraser.config
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
