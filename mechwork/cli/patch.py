"""``mechwork patch MODEL``: activation / attribution / relevance patching and integrated gradients on a task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import Opt, add_options, command, given, key_values, shared

_CANON = {"atp": "attribution", "relp": "relevance", "ig": "integrated_gradients"}
_HEAD_KINDS = ("z", "q", "k", "v", "pattern", "attn_scores", "result", "heads", "head")


def register(sub: argparse._SubParsersAction) -> None:
    from ..patching import METHODS, activation_patch, integrated_gradients

    p = command(
        sub,
        "patch",
        help="localise a behaviour: activation, attribution, relevance patching or integrated gradients",
        description="Score every cell of a grid (sites x layer x position/head) by how much patching it from the "
        "clean into the corrupted run changes the task metric. 'activation' is the ground truth (batched forward "
        "passes); 'attribution' (AtP) and 'relevance' (RelP, LRP rules) cost one backward pass; 'ig' integrates "
        "gradients along the path. 'all' runs the four and reports each one's Pearson r against activation patching.",
        examples=[
            "mechwork patch toy-mixed --task ioi --method relp --per head",
            "mechwork patch toy-mixed --task ioi --method activation --sites block --per position --html ioi.html",
            "mechwork patch toy-induction-2l --task induction --task-options segment_len=10 --method all --per head",
            "mechwork patch toy-mixed --task ioi --method ig --sites resid_pre --steps 64 --out ig.json",
        ],
        parents=[
            shared("backend", "device", "seed", "json", device="cpu", help={"seed": "prompt seed", "json": _JSON})
        ],
        func=run,
    )
    p.add_argument(
        "model", nargs="?", default="toy-mixed", help="shipped name, mechwork/HF folder (default: toy-mixed)"
    )
    p.add_argument("--task", default="ioi", help="ioi, induction, gender, style (default: ioi)")
    p.add_argument("--method", default="activation", choices=(*METHODS, "all"), help="default: activation")
    add_options(
        p,
        activation_patch,
        [
            Opt("per", choices=(), help="layer, position, head, head_position (default: head for z, else position)"),
            Opt(
                "sites",
                help="comma-separated kinds/sites: resid_pre, resid_post, attn_out, mlp_out, z, q, k, v, pattern, "
                "block (= resid_pre,attn_out,mlp_out), z.1, ... (default: z for head granularities, else resid_pre)",
            ),
            Opt("direction", default="denoise"),
            Opt("batch_size", help="most rows per forward pass"),
        ],
        ns="grid",
    )
    p.add_argument(
        "--task-options",
        default=None,
        metavar="K=V,...",
        help="task options, e.g. prefix_len=4,segment_len=10 for induction or template=0 for ioi",
    )
    p.add_argument("--n", type=int, default=32, help="number of prompts (default: 32)")
    p.add_argument("--rules", default=None, help="RelP rules, comma-separated: layernorm,identity,half,attention")
    add_options(p, integrated_gradients, [Opt("steps", help="IG quadrature points"), Opt("path", help="IG path")])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 for models under 20M parameters)")
    p.add_argument("--top", type=int, default=10, help="print the top N cells (default: 10)")
    p.add_argument(
        "--faithfulness",
        type=int,
        default=None,
        metavar="K",
        help="also report the faithfulness of the top K cells (everything else of the grid corrupted)",
    )
    p.add_argument("--out", default=None, help="write the result as JSON")
    p.add_argument("--html", default=None, help="write the figure as self-contained HTML")


_JSON = "print a JSON summary instead of text"


def _methods(name: str) -> list[str]:
    if name == "all":
        return ["activation", "attribution", "relevance", "integrated_gradients"]
    return [_CANON.get(name, name)]


def _kwargs(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from ..patching import integrated_gradients

    kw: dict[str, Any] = {**given(args, "grid"), "progress": not args.json}
    if "sites" in kw:
        kw["sites"] = [s.strip() for s in kw["sites"].split(",") if s.strip()]
    kinds = [x.split(".")[0] for x in kw.get("sites", ["z"])]
    kw.setdefault("per", "head" if all(k in _HEAD_KINDS for k in kinds) else "position")
    if method == "relevance" and args.rules:
        kw["rules"] = [r.strip() for r in args.rules.split(",") if r.strip()]
    if method == "integrated_gradients":
        kw.update(given(args, integrated_gradients))
    return kw


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import tasks
    from ..core.io import atomic_write_json
    from ..models.load import load_model
    from ..patching import METHODS, faithfulness, plot_comparison
    from ..viz import save_html

    model = load_model(args.model, device=args.device, backend=args.backend)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif sum(p.numel() for p in model.parameters()) < 20_000_000:
        torch.set_num_threads(1)  # tiny models: more threads only add OpenMP contention
    try:
        task = tasks.get(args.task, **key_values(args.task_options, flag="--task-options"))
    except TypeError as e:  # an option the task does not have
        from ..core.errors import ConfigError

        raise ConfigError(f"bad --task-options for task {args.task!r}: {e}") from e
    batch = task.prompts(args.n, seed=args.seed, model=model)  # rendered through the model's own tokenizer
    results = {m: METHODS[m](model, batch, task, **_kwargs(m, args)) for m in _methods(args.method)}
    main = next(iter(results.values()))
    ref = results.get("activation")
    summary: dict[str, Any] = {
        "model": args.model,
        "task": args.task,
        "n": args.n,
        "seed": args.seed,
        "clean": main.clean,
        "corrupted": main.corrupted,
        "methods": {},
    }
    for name, r in results.items():
        entry: dict[str, Any] = {"cost": r.cost, "top": [{"node": str(n), "score": n.score} for n in r.top(args.top)]}
        if ref is not None and r is not ref:
            entry["pearson_vs_activation"] = r.correlation(ref)
        if "completeness" in r.info:
            entry["completeness"] = r.info["completeness"]
        if args.faithfulness:
            f = faithfulness(model, batch, task, r.top(args.faithfulness), universe=r)
            entry["faithfulness"] = {"k": args.faithfulness, "value": f.value, "metric": f.metric}
        summary["methods"][name] = entry
    if args.out:
        payload = (
            main.to_json()
            if len(results) == 1
            else {
                "format": "mechwork-patch-comparison",
                "results": {k: v.to_json() for k, v in results.items()},
                "summary": summary,
            }
        )
        atomic_write_json(Path(args.out), payload)
    if args.html:
        others = [r for r in results.values() if r is not ref]
        fig = plot_comparison(ref, others) if ref is not None and others else main.plot()
        save_html(fig, args.html)
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
        return 0
    _print(summary, results, args)
    return 0


def _print(summary: dict[str, Any], results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{args.model} / {args.task}: {args.n} prompts, clean metric {summary['clean']:.4f}, corrupted {summary['corrupted']:.4f}"
    )
    for name, r in results.items():
        e = summary["methods"][name]
        c = r.cost
        print(f"\n{r!r}")
        print(
            f"  cost: {c['forwards']} forward / {c['backwards']} backward passes, {c['rows']} rows, "
            f"{c['full_forward_equivalents']} full-forward equivalents, {c['seconds']:.2f} s"
        )
        if "pearson_vs_activation" in e:
            print(f"  Pearson r vs activation patching: {e['pearson_vs_activation']:.3f}")
        for site, comp in e.get("completeness", {}).items():
            print(
                f"  completeness {site}: sum {comp['sum']:.4f} vs exact {comp['exact']:.4f} (rel. error {comp['relative_error']:.2e})"
            )
        if "faithfulness" in e:
            f = e["faithfulness"]
            print(f"  faithfulness of the top {f['k']}: {f['value']:.3f} (metric {f['metric']:.4f})")
        gap = r.gap or float("nan")
        print(f"  top {len(e['top'])}:")
        for t in e["top"]:
            print(f"    {t['node']:<28} {t['score']:+.4f}  ({t['score'] / gap:+.3f} of the gap)")
    if args.out:
        print(f"\nwrote {args.out}")
    if args.html:
        print(f"wrote {args.html}")
