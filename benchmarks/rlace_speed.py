"""R-LACE: steps and seconds to the guard, the paper's reference schedule against the fast one, split by cause.

The fast schedule differs from the reference in four ways; each row below adds one of them, so the speed-up
splits into factors that multiply to the whole:

  A  reference (the paper's): raw data, minibatch 128, SGD 5e-3 / weight decay 1e-4 for both players
  B  A on the same normalised data as the fast schedule (centred, unit mean-square coordinate)
  C  B with full-batch gradients
  D  C with the fast step sizes (SGD 2.0 / weight decay 1e-2): the fast schedule itself
  E  B with the fast step sizes but minibatch 128 (whether the step sizes work without the full batch)

The remaining differences do not change the step count or the step cost on this CPU: both schedules share the
logits ``X((I - A)θ)`` and the sync-free (vectorised) Fantope bisection, which only matters on a GPU (host
synchronisations; not measured here). The fast schedule's frequent evaluations (every 10 steps) and patience
rule decide when it stops; they are counted in its wall clock, not in the step counts.

Steps to the guard are found by judging every evaluation point of a run afterwards on held-out rows with a fresh
probe (``erasure_bench.time_to_guard``); the runs are seeded, so step counts are exact. Seconds per step are
medians of interleaved timings of the two step kinds (minibatch 128 and full batch) in the same process, so
machine noise hits both alike; seconds to the guard = steps x seconds per step (evaluations excluded).

Run alone: ``python benchmarks/rlace_speed.py [--d 64,768]`` updates the ``rlace_*`` entries of
``benchmarks/results/erasure.json`` (the rest of that file is left as it was); ``erasure_bench.py`` calls it too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS_DIR, load_json, write_results  # noqa: E402
from mechwork.erasure import LEACE, RLACE, probe_report  # noqa: E402

#: (key, label, RLACE options, step budget at d = 64 and at d = 768 (None: not run there), evaluation interval)
VARIANTS: list[tuple[str, str, dict[str, Any], tuple[int | None, int | None], int]] = [
    ("A", "reference (paper): raw data, batch 128, lr 5e-3", {"schedule": "reference"}, (20000, None), 500),
    ("B", "A on the normalised data", {"schedule": "reference", "normalise": True}, (8000, 3000), 100),
    (
        "C",
        "B with full-batch gradients",
        {"schedule": "reference", "normalise": True, "batch_size": 0},
        (8000, None),
        100,
    ),
    ("D", "C with the fast step sizes (lr 2.0, wd 1e-2) = the fast schedule", {"schedule": "fast"}, (200, 200), 10),
    (
        "E",
        "B with the fast step sizes but batch 128 (interaction check)",
        {"schedule": "reference", "normalise": True, "lr": 2.0, "weight_decay": 1e-2},
        (400, None),
        10,
    ),
]


def step_seconds(X: torch.Tensor, y: torch.Tensor, *, rounds: int, steps: int) -> dict[int, float]:
    """Median seconds of one game step with minibatch 128 and with the full batch, interleaved."""
    from mechwork.erasure.rlace import _Game

    g = torch.Generator().manual_seed(0)
    games = {bs: _Game(RLACE(schedule="fast", batch_size=bs), X, y, 2, 1, g) for bs in (128, 0)}
    times: dict[int, list[float]] = {bs: [] for bs in games}
    for game in games.values():
        game.step()  # warm-up
    for _ in range(rounds):
        for bs, game in games.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                game.step()
            times[bs].append((time.perf_counter() - t0) / steps)
    return {bs: sorted(v)[len(v) // 2] for bs, v in times.items()}


def decomposition(d: int, *, n: int = 20000, rounds: int = 5) -> dict[str, Any]:
    from benchmarks.erasure_bench import synthetic, time_to_guard

    X, y = synthetic(d, n=n, seed=1)
    cut = int(0.8 * n)
    Xtr, ytr, Xte, yte = X[:cut], y[:cut], X[cut:], y[cut:]
    g = torch.Generator().manual_seed(0)  # the rows R-LACE trains on (its default dev split)
    rows_fit = torch.randperm(cut, generator=g)[int(round(0.2 * cut)) :]
    sal = probe_report(
        LEACE.fit(Xtr[rows_fit], ytr[rows_fit], method="orth"), Xte, yte, probes=("linear",), before=False
    )
    per_step = step_seconds(Xtr, ytr, rounds=rounds, steps=20 if d <= 128 else 5)
    out: dict[str, Any] = {
        "d": d,
        "n_train": cut,
        "n_test": n - cut,
        "closed_form_sal_same_rows_test_accuracy": sal["linear_accuracy"],
        "step_seconds_batch128": per_step[128],
        "step_seconds_full_batch": per_step[0],
        "rows": [],
    }
    for key, label, opts, budgets, every in VARIANTS:
        budget = budgets[0] if d <= 128 else budgets[1]
        if budget is None:
            continue
        t0 = time.perf_counter()
        e = RLACE.fit(Xtr, ytr, **opts, max_steps=budget, eval_every=every, tol=-1.0, patience=0, keep_history=True)
        wall = time.perf_counter() - t0
        r = time_to_guard(e, Xte, yte, floor=sal["linear_accuracy"])
        sps = per_step[0] if opts.get("schedule") == "fast" or opts.get("batch_size") == 0 else per_step[128]
        row = {
            "key": key,
            "variant": label,
            "budget_steps": budget,
            "eval_every": every,
            "steps_to_guard": r["steps"],
            "seconds_to_guard": None if r["steps"] is None else r["steps"] * sps,
            "step_seconds": sps,
            "test_accuracy": r["test_accuracy"],
            "majority": r["majority"],
            "run_wall_seconds_with_evaluations": wall,
        }
        out["rows"].append(row)
        print(f"  d={d} {key}: {row}", flush=True)
    by = {r["key"]: r for r in out["rows"]}
    secs = {k: r["seconds_to_guard"] for k, r in by.items()}
    factors: dict[str, float | None] = {}
    for name, a, b in (("normalisation", "A", "B"), ("full batch", "B", "C"), ("step sizes", "C", "D")):
        factors[name] = secs[a] / secs[b] if secs.get(a) and secs.get(b) else None
    out["factors"] = factors
    if secs.get("A") and secs.get("D"):
        out["speedup_A_over_D"] = secs["A"] / secs["D"]
    return out


def extrapolate_reference(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Raw-data reference steps at the large d, assuming the normalisation factor in steps measured at the small d
    (A / B) carries over. An assumption, published as one."""
    s = {r["key"]: r for r in small["rows"]}
    b = {r["key"]: r for r in large["rows"]}["B"]
    if not (s.get("A", {}).get("steps_to_guard") and s["B"]["steps_to_guard"] and b["steps_to_guard"]):
        return {}
    ratio = s["A"]["steps_to_guard"] / s["B"]["steps_to_guard"]
    steps = b["steps_to_guard"] * ratio
    return {
        "assumption": f"raw/normalised step ratio of d = {small['d']} ({ratio:.1f}) holds at d = {large['d']}",
        "steps_to_guard": steps,
        "seconds_to_guard": steps * large["step_seconds_batch128"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", default="64,768", help="comma-separated dimensions (default 64,768)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = {f"rlace_speed_d{d}": decomposition(int(d)) for d in args.d.split(",")}
    if "rlace_speed_d64" in res and "rlace_speed_d768" in res:
        res["rlace_speed_d768"]["reference_extrapolated"] = extrapolate_reference(
            res["rlace_speed_d64"], res["rlace_speed_d768"]
        )
    if not args.no_write:
        path = RESULTS_DIR / "erasure.json"
        old = load_json(path) if path.is_file() else {}
        payload = {k: v for k, v in old.items() if k not in ("benchmark", "environment")}
        payload["date_rest"] = old.get("date_rest", old.get("date"))
        payload.update(res)
        payload["note_rlace"] = "rlace_speed_* re-run alone by benchmarks/rlace_speed.py (date); the rest: date_rest"
        write_results("erasure", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
