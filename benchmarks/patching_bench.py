"""Patching benchmark: how well attribution patching, RelP and integrated gradients approximate activation
patching, what each costs, and mechwork's batched activation patching against ``transformer_lens.patching``.

For IOI on ``toy-mixed`` and induction on ``toy-induction-2l``:

1. quality: Pearson r of each gradient method with activation patching, per component type (residual
   stream x position, attention output x position, MLP output x position, heads x position, heads), plus
   the faithfulness of each method's top heads;
2. cost: forward/backward passes, full-forward equivalents and seconds of each method;
3. speed: mechwork's activation patching vs ``transformer_lens.patching`` on the same grids (identical scores
   required), with and without resuming forwards from the patched layer/position.

Writes ``benchmarks/results/patching.json`` and the "Patching" section of ``benchmarks/RESULTS.md``.

    python benchmarks/patching_bench.py            # full run (a few minutes on one CPU thread)
    python benchmarks/patching_bench.py --quick    # fewer prompts, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's per-cell progress bars

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mechwork  # noqa: E402
from benchmarks._common import load_json, print_table, timeit, write_results  # noqa: E402
from mechwork.patching import (  # noqa: E402
    activation_patch,
    attribution_patch,
    faithfulness_curve,
    integrated_gradients,
    relevance_patch,
)

SETUPS = [  # (model, task, task options): induction segments inside the model's training range (8-24)
    ("toy-mixed", "ioi", {}),
    ("toy-induction-2l", "induction", {"prefix_len": 4, "segment_len": 10}),
]
GRIDS = [  # (label, sites, per)
    ("resid_pre x pos", "resid_pre", "position"),
    ("attn_out x pos", "attn_out", "position"),
    ("mlp_out x pos", "mlp_out", "position"),
    ("heads x pos", "z", "head_position"),
    ("heads", "z", "head"),
]
METHODS = {
    "AtP": (attribution_patch, {}),
    "RelP": (relevance_patch, {}),
    "RelP+AH": (relevance_patch, {"rules": ["layernorm", "identity", "half", "attention"]}),
    "IG (site path)": (integrated_gradients, {"steps": 32}),
    "IG (input path)": (integrated_gradients, {"steps": 32, "path": "input"}),
}
TL_GRIDS = [  # (label, TL function, mechwork sites, per)
    ("resid_pre x pos", "get_act_patch_resid_pre", "resid_pre", "position"),
    ("heads x pos", "get_act_patch_attn_head_out_by_pos", "z", "head_position"),
    ("block (resid_pre, attn_out, mlp_out) x pos", "get_act_patch_block_every", "block", "position"),
]
MD_START, MD_END = "<!-- patching:start -->", "<!-- patching:end -->"


def _has_mlp(model: Any) -> bool:
    return not getattr(model.cfg, "attn_only", False)


def quality(model: Any, task: Any, batch: Any) -> tuple[list[dict], dict[str, Any]]:
    rows, ap_heads, results = [], None, {}
    for label, sites, per in GRIDS:
        if sites == "mlp_out" and not _has_mlp(model):
            continue
        ap = activation_patch(model, batch, task, sites=sites, per=per)
        if label == "heads":
            ap_heads = ap
        row: dict[str, Any] = {"grid": label, "cells": ap.scores.numel(), "AP s": ap.cost["seconds"]}
        for name, (fn, kw) in METHODS.items():
            r = fn(model, batch, task, sites=sites, per=per, **kw)
            row[name] = r.correlation(ap)
            results[(label, name)] = r
        rows.append(row)
    return rows, {"ap_heads": ap_heads, "results": results}


def costs(model: Any, task: Any, batch: Any) -> list[dict]:
    rows = []
    fns = {"activation": (activation_patch, {}), **METHODS}
    for name, (fn, kw) in fns.items():
        r = fn(model, batch, task, sites="z", per="head_position", **kw)
        c = r.cost
        rows.append(
            {
                "method": name,
                "forwards": c["forwards"],
                "backwards": c["backwards"],
                "full-forward equiv.": c["full_forward_equivalents"],
                "seconds": c["seconds"],
            }
        )
    return rows


def faithful(model: Any, task: Any, batch: Any, found: dict[str, Any], sizes: tuple[int, ...]) -> list[dict]:
    rows = []
    ap = found["ap_heads"]
    candidates = {"activation": ap, **{name: found["results"][("heads", name)] for name in METHODS}}
    for name, r in candidates.items():
        curve = faithfulness_curve(model, batch, task, r, sizes=sizes, absolute=False)
        row: dict[str, Any] = {"method": name}
        row.update({f"top {k}": f.value for k, f in zip(sizes, curve)})
        row["top heads"] = ", ".join(f"L{n.layer}H{n.head}" for n in r.top(4, absolute=False))
        rows.append(row)
    return rows


def speed(model: Any, task: Any, batch: Any, repeat: int) -> list[dict]:
    import transformer_lens.patching as tlp

    rows = []
    for label, fn_name, sites, per in TL_GRIDS:
        if sites == "block" and not _has_mlp(model):
            continue
        fn = getattr(tlp, fn_name)

        def tl_run(fn: Any = fn) -> torch.Tensor:
            _, cache = model.run_with_cache(batch.clean)
            with torch.no_grad():
                m_corr = task.metric(model(batch.corrupted), batch).mean().item()
            return fn(model, batch.corrupted, cache, lambda logits: task.metric(logits, batch).mean()) - m_corr

        ref = tl_run()
        ours = activation_patch(model, batch, task, sites=sites, per=per)
        plain = activation_patch(model, batch, task, sites=sites, per=per, resume=False)
        t_tl = timeit(tl_run, repeat=repeat, warmup=0)
        t_ours = timeit(lambda s=sites, p=per: activation_patch(model, batch, task, sites=s, per=p), repeat=repeat)
        t_plain = timeit(
            lambda s=sites, p=per: activation_patch(model, batch, task, sites=s, per=p, resume=False), repeat=repeat
        )
        rows.append(
            {
                "grid": label,
                "cells": ref.numel(),
                "TL forwards": ref.numel() + 2,
                "TL s": t_tl,
                "mechwork forwards": ours.cost["forwards"],
                "mechwork s": t_ours,
                "speed-up": t_tl / t_ours,
                "batched only s": t_plain,
                "batched only speed-up": t_tl / t_plain,
                "max abs diff": float(max((ours.scores - ref).abs().max(), (plain.scores - ref).abs().max())),
            }
        )
    return rows


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    out = [
        MD_START,
        "## Patching",
        "",
        f"`python benchmarks/patching_bench.py` ({payload['date']}; {env.get('cpu')}, {env.get('torch_threads')} torch "
        f"thread(s), device {env.get('device')}; torch {env.get('torch')}, transformer-lens {env.get('transformer_lens')}; "
        f"{payload['n_prompts']} prompts). Scores are denoising metric changes; r is Pearson's correlation with "
        "activation patching over the grid's cells.",
        "",
    ]
    for setup in payload["setups"]:
        opts = ", ".join(f"{k}={v}" for k, v in setup.get("task_options", {}).items())
        out += [
            f"### {setup['model']} / {setup['task']}{f' ({opts})' if opts else ''}: clean {setup['clean']:.3f}, "
            f"corrupted {setup['corrupted']:.3f}",
            "",
            "Pearson r with activation patching:",
            "",
            _md_table(setup["quality"]),
            "",
            "Cost on the heads x position grid:",
            "",
            _md_table(setup["cost"]),
            "",
            "Faithfulness of each method's top-k heads (signed ranking; every other head corrupted):",
            "",
            _md_table(setup["faithfulness"]),
            "",
            "Activation patching vs `transformer_lens.patching` (same grid, identical scores):",
            "",
            _md_table(setup["speed"]),
            "",
        ]
    out += [payload.get("notes", ""), MD_END]
    return "\n".join(out)


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def update_results_md(section: str) -> Path:
    from mechwork.core.io import atomic_write_text

    path = Path(__file__).resolve().parent / "RESULTS.md"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(MD_START) + ".*?" + re.escape(MD_END), re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    atomic_write_text(path, text)
    return path


NOTES = """Reading the numbers: attribution patching is a first-order expansion around the corrupted run; RelP
replaces local derivatives by LRP coefficients (LN-rule: the normalising scale is constant in the backward
pass; Identity-rule: the MLP activation passes relevance through; AH-rule: attention patterns constant); IG
integrates the gradient along a straight path from the corrupted to the clean activation. With the site path a
cell's IG score is its share of the joint patch of its whole site (Aumann-Shapley), which differs from patching
the cell alone when cells interact (e.g. redundant or mutually dependent heads); per site the scores sum to the
effect of patching the whole site (completeness). Speed-ups come from stacking many patched copies per forward
pass, skipping (cell, prompt) pairs whose source and base activations are identical (their effect is exactly 0),
resuming each forward from the patched layer and first changed position with cached keys/values, and, for sites
after the attention mixing (z, q, pattern, attn_out, MLP, resid_post), computing the patched layer only over the
changed positions ("batched only" = the first two; resuming needs start_at_layer, which the TransformerBridge
lacks). The speed-up depends on the task layout: IOI corrupts a late token, induction a whole early segment."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 prompts, one timing repeat")
    ap.add_argument("--n", type=int, default=None, help="prompts per setup (default 32, --quick 16)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--no-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(m for m, _, _ in SETUPS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = args.n or (16 if args.quick else 32)
    repeat = 1 if args.quick else 3
    setups = []
    chosen = [x for x in SETUPS if args.models is None or x[0] in args.models.split(",")]
    for model_name, task_name, options in chosen:
        model = mechwork.load_model(model_name, device="cpu")
        task = mechwork.tasks.get(task_name, **options)
        batch = task.prompts(n, seed=0)
        print(f"\n=== {model_name} / {task_name} {options or ''}: {n} prompts ===", flush=True)
        q_rows, found = quality(model, task, batch)
        print_table(q_rows, title="Pearson r with activation patching")
        c_rows = costs(model, task, batch)
        print_table(c_rows, title="cost, heads x position")
        sizes = (2, 4, 6, 8) if task_name == "ioi" else (2, 4, 5, 6)
        f_rows = faithful(model, task, batch, found, sizes)
        print_table(f_rows, title="faithfulness of the top-k heads")
        s_rows = speed(model, task, batch, repeat)
        print_table(s_rows, title="activation patching vs transformer_lens.patching")
        ap_heads = found["ap_heads"]
        setups.append(
            {
                "model": model_name,
                "task": task_name,
                "task_options": options,
                "clean": ap_heads.clean,
                "corrupted": ap_heads.corrupted,
                "quality": q_rows,
                "cost": c_rows,
                "faithfulness": f_rows,
                "speed": s_rows,
            }
        )
    payload = {"n_prompts": n, "setups": setups, "notes": NOTES}
    out = write_results("patching", payload, args.out)
    if not args.no_md:
        path = update_results_md(markdown(load_json(out)))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
