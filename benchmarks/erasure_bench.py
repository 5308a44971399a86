"""Erasure benchmark: INLP, R-LACE, LEACE and concept-erasure's LEACE in one run.

1. Synthetic anisotropic binary concept (METHODS 8.7 recipe) at d = 64 and d = 768: held-out probe accuracy
   after erasure (linear, MLP) vs the majority rate, distortion, rank, fit time; LEACE vs the peer as a ratio.
2. R-LACE speed: steps and seconds until a fresh held-out probe is within 3 points of the majority rate, from the
   paper's reference schedule to the fast one one change at a time (``benchmarks/rlace_speed.py``, which also
   runs alone), so that the speed-up splits by cause.
3. toy-mixed, gender, at every residual-stream site: probes at the prediction position, and the model's gender /
   IOI / induction accuracy with each eraser hooked in.

Run: ``python benchmarks/erasure_bench.py [--quick] [--skip-model]``. The machine is shared and noisy: read the
times as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import print_table, write_results  # noqa: E402
from benchmarks.rlace_speed import decomposition, extrapolate_reference  # noqa: E402
from mechwork.erasure import (  # noqa: E402
    INLP,
    LEACE,
    RLACE,
    Eraser,
    probe_report,  # noqa: E402
)

GUARD = 0.03


def synthetic(d: int, *, n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=8, n_redundant=8, class_sep=1.5, random_state=seed
    )
    M = np.random.default_rng(seed).standard_normal((d, d)) * 0.5
    return torch.from_numpy(X @ M).float(), torch.from_numpy(y)


def judge(apply: Callable[[torch.Tensor], torch.Tensor], Xte: torch.Tensor, yte: torch.Tensor) -> dict[str, float]:
    """Fresh linear and MLP probes on one half of the erased held-out data, scored on the other; distortion."""
    r = probe_report(apply, Xte, yte, before=False)
    return {
        "majority": r["majority"],
        "linear_acc": r["linear_accuracy"],
        "mlp_acc": r["mlp_accuracy"],
        "mse": r["mse"],
        "mse_whitened": r["mse_whitened"],
    }


def method_table(
    Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor, yte: torch.Tensor, *, quick: bool
) -> list[dict[str, Any]]:
    from concept_erasure import LeaceEraser

    rows: list[dict[str, Any]] = []
    before = judge(lambda x: x, Xte, yte)
    rows.append({"method": "no erasure", "rank": 0, "fit_s": 0.0, **before})

    def add(
        name: str,
        fit: Callable[[], Any],
        apply: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]],
        rank: Callable[[Any], int],
    ) -> Any:
        t0 = time.perf_counter()
        obj = fit()
        dt = time.perf_counter() - t0
        rows.append({"method": name, "rank": rank(obj), "fit_s": dt, **judge(apply(obj), Xte, yte)})
        print(f"  {name}: {rows[-1]}", flush=True)
        return obj

    ours = add("LEACE (mechwork)", lambda: LEACE.fit(Xtr, ytr), lambda e: e, lambda e: e.rank)
    peer = add(
        "LEACE (concept-erasure 0.2.4, shrinkage off)",
        lambda: LeaceEraser.fit(Xtr, ytr.float(), shrinkage=False),
        lambda e: e,
        lambda e: int(e.proj_left.shape[1]),
    )
    peer64 = add(
        "LEACE (concept-erasure, shrinkage off, float64 input)",
        lambda: LeaceEraser.fit(Xtr.double(), ytr.double(), shrinkage=False),
        lambda e: lambda x: e(x.double()).float(),
        lambda e: int(e.proj_left.shape[1]),
    )
    add(
        "LEACE (concept-erasure, default shrinkage on)",
        lambda: LeaceEraser.fit(Xtr, ytr.float()),
        lambda e: e,
        lambda e: int(e.proj_left.shape[1]),
    )
    lea = next(r for r in rows if r["method"] == "LEACE (mechwork)")
    lea["max_abs_diff_vs_peer_float32"] = float((ours(Xte).double() - peer(Xte).double()).abs().max())
    lea["max_abs_diff_vs_peer_float64"] = float((ours(Xte).double() - peer64(Xte.double())).abs().max())
    lea["max_abs_input"] = float(Xte.abs().max())
    add("orth / SAL (mechwork)", lambda: LEACE.fit(Xtr, ytr, method="orth"), lambda e: e, lambda e: e.rank)
    for it in (1, 5) if quick else (1, 5, 20):
        add(
            f"INLP, {it} iteration(s)",
            lambda it=it: INLP.fit(Xtr, ytr, n_iter=it, stop_within=0.0),
            lambda e: e,
            lambda e: e.rank,
        )
    add("R-LACE rank 1, fast, random start", lambda: RLACE.fit(Xtr, ytr), lambda e: e, lambda e: e.rank)
    add("R-LACE rank 1, fast, SAL start", lambda: RLACE.fit(Xtr, ytr, init="sal"), lambda e: e, lambda e: e.rank)
    return rows


def time_to_guard(
    e: Eraser, Xte: torch.Tensor, yte: torch.Tensor, *, step_seconds: float | None = None, floor: float = 0.0
) -> dict[str, Any]:
    """Judge every evaluation point of an R-LACE run on held-out data: the first step whose rank-k projection lets
    a fresh linear probe (trained on half of the held-out rows, scored on the other half) come within GUARD of the
    majority rate, or within 1 point of ``floor`` (what the closed-form optimum fitted on the same rows reaches on
    these held-out rows: no rank-1 projection fitted on them does better, so a guard below it is noise).
    (The run's own dev-split accuracies are biased: it keeps the P that maximises the dev loss.)"""
    hist, dirs = e.card["history"], e.extras["history_directions"].double()
    mu = Xte.double().mean(0)
    for h, U in zip(hist, dirs):
        proj = lambda x, U=U: x.double() - ((x.double() - mu) @ U) @ U.T  # noqa: E731
        r = probe_report(proj, Xte, yte, probes=("linear",), before=False)
        h["test_accuracy"], h["test_majority"] = r["linear_accuracy"], r["majority"]
        if abs(r["linear_accuracy"] - r["majority"]) < GUARD or r["linear_accuracy"] <= floor + 0.01:
            secs = h["seconds"] if step_seconds is None else h["step"] * step_seconds
            return {
                "steps": h["step"],
                "seconds": secs,
                "test_accuracy": r["linear_accuracy"],
                "majority": r["majority"],
            }
    return {
        "steps": None,
        "seconds": None,
        "test_accuracy": hist[-1].get("test_accuracy"),
        "majority": hist[-1].get("test_majority"),
    }


def toy_mixed_sweep(quick: bool) -> list[dict[str, Any]]:
    """Every residual site of toy-mixed: our three methods fitted on every token (the default), on the prediction
    position only, and LEACE stratified by position; plus concept-erasure's LEACE on the same rows as ours."""
    from concept_erasure import LeaceEraser

    import mechwork
    from mechwork.erasure import EraserConfig, behaviour, labelled, layer_sweep, residual_sites
    from mechwork.erasure import labelled_activations as collect

    model = mechwork.load_model("toy-mixed", device="cpu")
    n_fit, n_eval, n_beh = (800, 400, 200) if quick else (2000, 800, 400)
    common = dict(n_fit=n_fit, n_eval=n_eval, behaviour_n=n_beh, probe_positions="last", progress=True)
    rows = layer_sweep(
        model,
        "gender",
        None,
        ("leace", "inlp", "rlace"),
        fit_positions="all",
        method_options={"inlp": {"n_iter": 10}},
        **common,
    )
    rows += layer_sweep(
        model,
        "gender",
        None,
        ("leace", "inlp", "rlace"),
        fit_positions="last",
        method_options={"inlp": {"n_iter": 10}},
        **common,
    )[1:]
    rows += layer_sweep(model, "gender", None, ("leace",), fit_positions="all", stratify="position", **common)[1:]
    fit_rows = labelled("gender", n=n_fit, seed=0, positions="all")
    held = labelled("gender", n=n_eval, seed=1, split="test", positions="last")
    for s in residual_sites(model):
        X, z = collect(model, fit_rows, s)
        t0 = time.perf_counter()
        peer = LeaceEraser.fit(X, z.float(), shrinkage=False)
        dt = time.perf_counter() - t0
        as_ours = Eraser(
            peer.proj_left,
            peer.proj_right,
            peer.bias,
            EraserConfig("leace (concept-erasure)", X.shape[1], int(peer.proj_left.shape[1]), True, fit_seconds=dt),
        )
        Xh, zh = collect(model, held, s)
        rep = probe_report(as_ours, Xh, zh)
        beh = behaviour(model, as_ours.hook(model, s), n=n_beh, seed=1)
        rows.append(
            {
                "site": s,
                "method": "leace (concept-erasure)",
                "label": "concept-erasure leace [all]",
                "positions": "all",
                **rep,
                **{f"{t}_{k}": v for t, r in beh.items() for k, v in r.items()},
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller budgets (a smoke run)")
    ap.add_argument("--skip-model", action="store_true", help="synthetic parts only")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import sklearn.linear_model
    import sklearn.neural_network
    import sklearn.svm  # noqa: F401  (imports kept out of the fit times)

    payload: dict[str, Any] = {
        "guard_points": GUARD,
        "note": "shared 2-core machine; compare times as ratios within this run",
    }
    for d in (64, 768):
        X, y = synthetic(d)
        Xtr, ytr, Xte, yte = X[:4000], y[:4000], X[4000:], y[4000:]
        print(f"== synthetic d={d}", flush=True)
        rows = method_table(Xtr, ytr, Xte, yte, quick=args.quick)
        print_table(
            rows,
            ["method", "rank", "linear_acc", "mlp_acc", "majority", "mse", "mse_whitened", "fit_s"],
            title=f"synthetic d={d}",
        )
        lea = next(r for r in rows if r["method"] == "LEACE (mechwork)")
        peer = next(r for r in rows if r["method"].startswith("LEACE (concept-erasure 0.2.4"))
        payload[f"synthetic_d{d}"] = {
            "rows": rows,
            "leace_time_ratio_ours_over_peer": lea["fit_s"] / max(peer["fit_s"], 1e-9),
        }
        payload[f"rlace_speed_d{d}"] = decomposition(d)  # benchmarks/rlace_speed.py: the speed-up split by cause
    payload["rlace_speed_d768"]["reference_extrapolated"] = extrapolate_reference(
        payload["rlace_speed_d64"], payload["rlace_speed_d768"]
    )
    if not args.skip_model:
        print("== toy-mixed gender sweep", flush=True)
        rows = toy_mixed_sweep(args.quick)
        payload["toy_mixed_gender"] = rows
        print_table(
            rows,
            [
                "site",
                "label",
                "rank",
                "linear_accuracy_before",
                "linear_accuracy",
                "mlp_accuracy",
                "majority",
                "gender_accuracy",
                "ioi_accuracy",
                "induction_accuracy",
                "fit_seconds",
            ],
            title="toy-mixed gender",
        )
    write_results("erasure", payload, args.out)


if __name__ == "__main__":
    main()
