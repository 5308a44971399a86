"""Erasure benchmark: INLP, R-LACE, LEACE and concept-erasure's LEACE in one run.

1. Synthetic anisotropic binary concept (METHODS 8.7 recipe) at d = 64 and d = 768: held-out probe accuracy
   after erasure (linear, MLP) vs the majority rate, distortion, rank, fit time; LEACE vs the peer as a ratio.
2. R-LACE speed: seconds until the in-loop held-out probe is within 3 points of the majority rate, for the fast
   schedule and for the reference schedule (the paper's: batch 128, SGD 5e-3, 50-75k steps). The reference is
   run on a step budget; its time is its measured time per step times the steps it needed (evaluation time
   excluded, which favours it), or a lower bound when the budget ran out.
3. toy-mixed, gender, at every residual-stream site: probes at the prediction position, and the model's gender /
   IOI / induction accuracy with each eraser hooked in.

Run: ``python benchmarks/erasure_bench.py [--quick] [--skip-model]``. The machine is shared and noisy: read the
times as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import print_table, write_results  # noqa: E402

from mechwork.erasure import INLP, LEACE, RLACE, Eraser  # noqa: E402
from mechwork.erasure import probe_report  # noqa: E402

GUARD = 0.03


def synthetic(d: int, *, n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=d, n_informative=8, n_redundant=8, class_sep=1.5, random_state=seed)
    M = np.random.default_rng(seed).standard_normal((d, d)) * 0.5
    return torch.from_numpy(X @ M).float(), torch.from_numpy(y)


def judge(apply: Callable[[torch.Tensor], torch.Tensor], Xte: torch.Tensor, yte: torch.Tensor) -> dict[str, float]:
    """Fresh linear and MLP probes on one half of the erased held-out data, scored on the other; distortion."""
    r = probe_report(apply, Xte, yte, before=False)
    return {"majority": r["majority"], "linear_acc": r["linear_accuracy"], "mlp_acc": r["mlp_accuracy"], "mse": r["mse"],
            "mse_whitened": r["mse_whitened"]}


def method_table(Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor, yte: torch.Tensor, *, quick: bool) -> list[dict[str, Any]]:
    from concept_erasure import LeaceEraser

    d = Xtr.shape[1]
    rows: list[dict[str, Any]] = []
    before = judge(lambda x: x, Xte, yte)
    rows.append({"method": "no erasure", "rank": 0, "fit_s": 0.0, **before})

    def add(name: str, fit: Callable[[], Any], apply: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]], rank: Callable[[Any], int]) -> Any:
        t0 = time.perf_counter()
        obj = fit()
        dt = time.perf_counter() - t0
        rows.append({"method": name, "rank": rank(obj), "fit_s": dt, **judge(apply(obj), Xte, yte)})
        print(f"  {name}: {rows[-1]}", flush=True)
        return obj

    ours = add("LEACE (mechwork)", lambda: LEACE.fit(Xtr, ytr), lambda e: e, lambda e: e.rank)
    peer = add("LEACE (concept-erasure 0.2.4, shrinkage off)", lambda: LeaceEraser.fit(Xtr, ytr.float(), shrinkage=False),
               lambda e: e, lambda e: int(e.proj_left.shape[1]))
    add("LEACE (concept-erasure, default shrinkage on)", lambda: LeaceEraser.fit(Xtr, ytr.float()), lambda e: e,
        lambda e: int(e.proj_left.shape[1]))
    rows[-3]["max_abs_diff_vs_peer"] = float((ours(Xte).double() - peer(Xte).double()).abs().max())
    add("orth / SAL (mechwork)", lambda: LEACE.fit(Xtr, ytr, method="orth"), lambda e: e, lambda e: e.rank)
    for it in (1, 5) if quick else (1, 5, 20):
        add(f"INLP, {it} iteration(s)", lambda it=it: INLP.fit(Xtr, ytr, n_iter=it, stop_within=0.0), lambda e: e, lambda e: e.rank)
    add("R-LACE rank 1, fast, random start", lambda: RLACE.fit(Xtr, ytr), lambda e: e, lambda e: e.rank)
    add("R-LACE rank 1, fast, SAL start", lambda: RLACE.fit(Xtr, ytr, init="sal"), lambda e: e, lambda e: e.rank)
    return rows


def time_to_guard(e: Eraser, majority_key: str = "majority") -> tuple[int | None, float | None]:
    """First evaluation step whose held-out probe is within GUARD of the majority rate, and the step seconds until then."""
    maj = e.card[majority_key]
    for h in e.card["history"]:
        if abs(h["accuracy"] - maj) < GUARD:
            return h["step"], h["seconds"]
    return None, None


def rlace_speed(Xtr: torch.Tensor, ytr: torch.Tensor, *, ref_budget: int, ref_eval: int) -> dict[str, Any]:
    fast = RLACE.fit(Xtr, ytr, tol=GUARD, patience=0)
    f_step, f_sec = time_to_guard(fast)
    ref = RLACE.fit(Xtr, ytr, schedule="reference", max_steps=ref_budget, eval_every=ref_eval, tol=GUARD)
    per_step = ref.card["step_seconds"] / max(1, ref.card["steps"])
    r_step, _ = time_to_guard(ref)
    out: dict[str, Any] = {
        "d": Xtr.shape[1],
        "fast_steps_to_guard": f_step,
        "fast_seconds_to_guard": f_sec,  # wall clock including the fast schedule's own evaluations
        "fast_step_seconds": fast.card["step_seconds"] / max(1, fast.card["steps"]),
        "reference_budget_steps": ref_budget,
        "reference_steps_run": ref.card["steps"],
        "reference_step_seconds": per_step,
        "reference_final_probe_acc": ref.card["history"][-1]["accuracy"],
        "reference_steps_to_guard": r_step,
        "reference_seconds_50k_steps": per_step * 50_000,
    }
    if r_step is not None:
        out["reference_seconds_to_guard"] = r_step * per_step
        out["speedup"] = out["reference_seconds_to_guard"] / f_sec if f_sec else None
        out["speedup_is_lower_bound"] = False
    else:
        out["reference_seconds_to_guard"] = None
        out["reference_seconds_lower_bound"] = ref.card["steps"] * per_step
        out["speedup"] = out["reference_seconds_lower_bound"] / f_sec if f_sec else None
        out["speedup_is_lower_bound"] = True
    print(f"  R-LACE speed d={out['d']}: {out}", flush=True)
    return out


def toy_mixed_sweep(quick: bool) -> list[dict[str, Any]]:
    import mechwork
    from mechwork.erasure import layer_sweep

    model = mechwork.load_model("toy-mixed", device="cpu")
    methods = ("leace", "inlp", "rlace")
    rows = layer_sweep(model, "gender", None, methods, n_fit=1000 if quick else 2000, n_eval=400 if quick else 800,
                       behaviour_n=200 if quick else 400, fit_positions="all", probe_positions="last",
                       method_options={"inlp": {"n_iter": 10}}, progress=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller budgets (a smoke run)")
    ap.add_argument("--skip-model", action="store_true", help="synthetic parts only")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    payload: dict[str, Any] = {"guard_points": GUARD, "note": "shared 2-core machine; compare times as ratios within this run"}
    for d in (64, 768):
        X, y = synthetic(d)
        Xtr, ytr, Xte, yte = X[:4000], y[:4000], X[4000:], y[4000:]
        print(f"== synthetic d={d}", flush=True)
        rows = method_table(Xtr, ytr, Xte, yte, quick=args.quick)
        print_table(rows, ["method", "rank", "linear_acc", "mlp_acc", "majority", "mse", "mse_whitened", "fit_s"], title=f"synthetic d={d}")
        lea = next(r for r in rows if r["method"] == "LEACE (mechwork)")
        peer = next(r for r in rows if r["method"].startswith("LEACE (concept-erasure 0.2.4"))
        payload[f"synthetic_d{d}"] = {"rows": rows, "leace_time_ratio_ours_over_peer": lea["fit_s"] / max(peer["fit_s"], 1e-9)}
        budget = (4000 if args.quick else 20000) if d == 64 else (200 if args.quick else 1000)
        payload[f"rlace_speed_d{d}"] = rlace_speed(Xtr, ytr, ref_budget=budget, ref_eval=500 if d == 64 else 100)
    if not args.skip_model:
        print("== toy-mixed gender sweep", flush=True)
        rows = toy_mixed_sweep(args.quick)
        payload["toy_mixed_gender"] = rows
        print_table(rows, ["site", "method", "rank", "linear_accuracy_before", "linear_accuracy", "mlp_accuracy", "majority",
                           "gender_accuracy", "ioi_accuracy", "induction_accuracy", "fit_seconds"], title="toy-mixed gender")
    write_results("erasure", payload, args.out)


if __name__ == "__main__":
    main()
