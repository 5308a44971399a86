"""Circuits benchmark: EAP and EAP-IG against exact edge patching on the two shipped tasks.

For IOI on toy-mixed and induction on toy-induction-2l: Pearson and Spearman correlation of the EAP and EAP-IG
edge scores with exact edge patching (the ground truth), seconds and forward/backward passes of each, exact
edge patching batched (many edges per forward, resumed from the receiver's layer and first corrupted position)
against one full forward per edge (the TransformerLens path-patching loop, over all prompts at once), and the
faithfulness-vs-size curve of each method's ranking.

    python benchmarks/circuits_bench.py [--n 32] [--steps 16]
"""

from __future__ import annotations

import argparse
import time

import torch

import mechwork
from mechwork.circuits import attribute_edges, faithfulness_curve

try:
    from _common import environment, print_table, write_results
except ImportError:  # run as a module
    from benchmarks._common import environment, print_table, write_results

CASES = [("toy-mixed", "ioi", {}), ("toy-induction-2l", "induction", {})]


def _rank(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def run(n: int, steps: int) -> dict:
    torch.set_num_threads(1)
    out: dict = {"env": environment(), "n_prompts": n, "steps": steps, "cases": {}}
    rows, speed, curves_rows = [], [], []
    for spec, task_name, opts in CASES:
        model = mechwork.load_model(spec)
        task = mechwork.tasks.get(task_name, **opts)
        batch = task.prompts(n, seed=0)
        graphs, secs = {}, {}
        for method, kw in [("eap", {}), ("eap-ig", {"steps": steps}), ("exact", {})]:
            t0 = time.perf_counter()
            graphs[method] = attribute_edges(model, batch, task, method=method, **kw)
            secs[method] = time.perf_counter() - t0
        t0 = time.perf_counter()
        unbatched = attribute_edges(model, batch, task, method="exact", one_per_edge=True, resume=False)
        secs["exact, one forward per edge"] = time.perf_counter() - t0
        ids = [e.id for e in graphs["exact"].edges]
        truth = torch.tensor([graphs["exact"].edge_dict()[i] for i in ids], dtype=torch.float64)
        same = max(abs(unbatched.edge_dict()[i] - float(v)) for i, v in zip(ids, truth))
        case = {
            "n_edges": len(ids),
            "clean": graphs["exact"].metadata["clean"],
            "corrupted": graphs["exact"].metadata["corrupted"],
        }
        for method in ("eap", "eap-ig"):
            est = torch.tensor([graphs[method].edge_dict()[i] for i in ids], dtype=torch.float64)
            r = {
                "case": f"{spec}/{task_name}",
                "method": method,
                "pearson": _pearson(est, truth),
                "spearman": _pearson(_rank(est), _rank(truth)),
                "pearson_abs": _pearson(est.abs(), truth.abs()),
            }
            rows.append(r)
            case[method] = r
        for method, g in list(graphs.items()) + [("exact, one forward per edge", unbatched)]:
            c = g.metadata["cost"]
            speed.append(
                {
                    "case": f"{spec}/{task_name}",
                    "method": method,
                    "seconds": secs[method],
                    "forwards": c["forwards"],
                    "backwards": c["backwards"],
                    "rows": c["rows"],
                    "full_fwd_equiv": c["full_forward_equivalents"],
                }
            )
        case["exact_batched_speedup"] = secs["exact, one forward per edge"] / secs["exact"]
        case["exact_batched_vs_unbatched_max_abs_diff"] = same
        case["seconds"] = secs
        case["curves"] = {}
        for method in ("eap", "eap-ig", "exact"):
            curve = faithfulness_curve(graphs[method], model, batch, task, label=method)
            case["curves"][method] = curve.to_dict()
            curves_rows.append(
                {
                    "case": f"{spec}/{task_name}",
                    "method": method,
                    "edges_for_0.8": curve.smallest(0.8),
                    "edges_for_0.9": curve.smallest(0.9),
                    "n_edges": curve.n_total,
                    **{f"f@{s}": round(v, 3) for s, v in zip(curve.sizes, curve.values) if s in (8, 16, 32, 64)},
                }
            )
        out["cases"][f"{spec}/{task_name}"] = case
    print_table(rows, title="Edge scores vs exact edge patching (ground truth)")
    print_table(speed, title="Cost (one CPU thread; 'rows' = prompt copies run)")
    print_table(
        [
            {
                "case": k,
                "batched_speedup": v["exact_batched_speedup"],
                "max_abs_diff": v["exact_batched_vs_unbatched_max_abs_diff"],
            }
            for k, v in out["cases"].items()
        ],
        title="Exact edge patching: batched+resumed vs one full forward per edge",
    )
    print_table(curves_rows, title="Faithfulness of the top-n edges (corrupt ablation)")
    out["correlations"], out["speed"], out["curves"] = rows, speed, curves_rows
    write_results("circuits", out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    run(args.n, args.steps)
