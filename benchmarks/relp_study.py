"""Why RelP does not beat AtP on the shipped models: the implementation, or the setting?

RelP (Rezaei Jafari et al. 2025) reports that relevance patching tracks activation patching far better than
attribution patching on the MLP outputs and residual stream of GPT-2 small (Pearson r 0.99 vs 0.20 on MLP outputs,
0.97 vs 0.75 on the residual stream). On toy-induction-2l the published patching benchmark has RelP below AtP on
resid_pre (0.14 vs 0.23). This study separates the two explanations.

1. Implementation. With every rule on (LN-rule, Identity-rule, AH-rule) RelP is by construction the exact
   effect of patching a *frozen* model: LayerNorm scales, attention patterns and the activation function's
   coefficients act(x)/x held at their values in the corrupted run, which makes the network linear in any one
   activation. So RelP+AH must equal activation patching of that frozen model (computed here by forward passes,
   independently of the LRP hooks), up to the Identity-rule's stabiliser, when the metric is linear in the logits.
2. Setting. On the same grids: how much of each cell's true (activation-patching) effect goes through changes of
   the attention patterns (activation patching with only the patterns frozen), and the correlation of AtP,
   RelP and RelP+AH with activation patching, on the shipped attention-only model and on toy-mixed (4 layers,
   GELU MLPs, LayerNorm: the zoo's deeper kind), for induction, IOI and gender.

Run: ``python benchmarks/relp_study.py`` (a few CPU-minutes); writes ``benchmarks/results/relp_study.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mechwork  # noqa: E402
from benchmarks._common import print_table, write_results  # noqa: E402
from mechwork.patching import activation_patch, attribution_patch, relevance_patch  # noqa: E402
from mechwork.patching.lrp import frozen_hooks, frozen_names  # noqa: E402

SETUPS = [
    ("toy-induction-2l", "induction", {"prefix_len": 4, "segment_len": 10}),
    ("toy-mixed", "induction", {"prefix_len": 4, "segment_len": 10}),
    ("toy-mixed", "ioi", {}),
    ("toy-mixed", "gender", {}),
]
HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
ALL_RULES = ["layernorm", "identity", "half", "attention"]


def centred_target_logit(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """Induction metric linear in the logits: the target token's logit minus the mean logit, averaged over the
    scored positions of the second copy (the task's own metric is the mean log-probability, not linear)."""
    mask = batch.loss_mask.to(logits.device).float()
    lg = logits.float()
    tgt = lg.gather(-1, batch.targets.to(logits.device)[..., None]).squeeze(-1) - lg.mean(-1)
    return (tgt * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def frozen_patch(model: Any, batch: Any, metric: Any, grid: str, *, rest: bool) -> torch.Tensor:
    """Denoising activation patching per (layer, position) of a model frozen at the corrupted run: attention
    patterns, and with ``rest`` LayerNorm scales and MLP activation coefficients too."""
    names = set(frozen_names(model))
    _, corrupted = model.run_with_cache(batch.corrupted, names_filter=lambda n: n in names)
    cache = dict(corrupted.items())
    site = [f"blocks.{layer}.{HOOK[grid]}" for layer in range(model.cfg.n_layers)]
    _, clean = model.run_with_cache(batch.clean, names_filter=lambda n: n in site)
    frozen = frozen_hooks(model, cache, ["layernorm", "identity", "attention"] if rest else ["attention"])
    with model.hooks(fwd_hooks=frozen):
        base = metric(model(batch.corrupted), batch)
    n_pos = batch.corrupted.shape[1]
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for layer, name in enumerate(site):
        for pos in range(n_pos):

            def patch(t, hook, v=clean[name], pos=pos):
                t = t.clone()
                t[:, pos] = v[:, pos]
                return t

            with model.hooks(fwd_hooks=[*frozen, (name, patch)]):
                out[layer, pos] = float((metric(model(batch.corrupted), batch) - base).mean())
    return out


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    ok = ~(a.isnan() | b.isnan())
    return float(torch.corrcoef(torch.stack([a[ok], b[ok]]))[0, 1])


def study(n: int) -> list[dict[str, Any]]:
    rows = []
    for model_name, task_name, opts in SETUPS:
        model = mechwork.load_model(model_name)
        task = mechwork.tasks.get(task_name, **opts)
        batch = task.prompts(n, seed=0)
        metrics = {"task": task} if task_name != "induction" else {"task": task, "linear": centred_target_logit}
        for metric_name, metric in metrics.items():
            fn = metric.metric if hasattr(metric, "metric") else metric
            for grid in ("resid_pre", "attn_out", "mlp_out"):
                if grid == "mlp_out" and getattr(model.cfg, "attn_only", False):
                    continue
                kw = dict(sites=grid, per="position")
                ap = activation_patch(model, batch, metric, **kw).scores
                atp = attribution_patch(model, batch, metric, **kw).scores
                relp = relevance_patch(model, batch, metric, **kw).scores
                relp_ah = relevance_patch(model, batch, metric, rules=ALL_RULES, **kw).scores
                fz = frozen_patch(model, batch, fn, grid, rest=True)
                pf = frozen_patch(model, batch, fn, grid, rest=False)
                rows.append(
                    {
                        "model": model_name,
                        "task": task_name,
                        "metric": metric_name,
                        "grid": f"{grid} x pos",
                        "r_AtP": _r(atp, ap),
                        "r_RelP": _r(relp, ap),
                        "r_RelP_AH": _r(relp_ah, ap),
                        "r_frozen_model_AP": _r(fz, ap),
                        "max_abs_RelP_AH_minus_frozen_AP": float((relp_ah - fz).abs().max()),
                        "max_abs_AP": float(ap.abs().max()),
                        "pattern_share": float((ap - pf).norm() / ap.norm()),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def rule_ablation(n: int) -> list[dict[str, Any]]:
    """resid_pre x pos on the two induction settings: which LRP rule moves RelP away from activation patching."""
    rows = []
    for model_name, task_name, opts in SETUPS[:2]:
        model = mechwork.load_model(model_name)
        task = mechwork.tasks.get(task_name, **opts)
        batch = task.prompts(n, seed=0)
        for metric_name, metric in (("task", task), ("linear", centred_target_logit)):
            kw = dict(sites="resid_pre", per="position")
            ap = activation_patch(model, batch, metric, **kw).scores
            row = {"model": model_name, "task": task_name, "metric": metric_name, "grid": "resid_pre x pos"}
            row["r_AtP"] = _r(attribution_patch(model, batch, metric, **kw).scores, ap)
            for label, rules in (("LN", ["layernorm"]), ("Identity", ["identity"]), ("AH", ["attention"])):
                row[f"r_RelP_{label}_only"] = _r(relevance_patch(model, batch, metric, rules=rules, **kw).scores, ap)
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="prompts per setting (default 32)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--ablation-only", action="store_true", help="only the per-rule table (adds it to the JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.ablation_only:
        from benchmarks._common import RESULTS_DIR, load_json

        old = load_json(RESULTS_DIR / "relp_study.json")
        payload = {k: v for k, v in old.items() if k not in ("benchmark", "environment")}
        payload["rule_ablation"] = rule_ablation(args.n)
        if not args.no_write:
            write_results("relp_study", payload)
        return 0
    rows = study(args.n)
    print_table(
        rows,
        ["model", "task", "metric", "grid", "r_AtP", "r_RelP", "r_RelP_AH", "max_abs_RelP_AH_minus_frozen_AP"],
        title="Pearson r with activation patching",
    )
    if not args.no_write:
        payload = {"n_prompts": args.n, "rows": rows, "rule_ablation": rule_ablation(args.n)}
        write_results("relp_study", {**payload, "note": "shared 2-core machine"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
