"""Steering benchmark: every method on the style concept at equal sample counts (8, 32, 128 prompts per side).

For each method and sample count: fit on N negative + N positive stories, evaluate at a grid of strengths
(share of positive generations from the neutral opener; KL to the unsteered next-token distribution on unrelated
text), and report the best rate within a fixed fluency budget, the fit time and the parameter count. Tests the
claim of LinEAS (METHODS 7.4-7.5): it is the most sample-efficient method at equal fluency cost.

    python benchmarks/steering_bench.py            # ~10 minutes on 2 shared CPU cores
    python benchmarks/steering_bench.py --quick    # N = 8, 32 only, fewer generations

Writes benchmarks/results/steering.json, steering_pareto.svg (the figure in RESULTS.md) and steering_pareto.html.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, print_table, write_results  # noqa: E402

BUDGET = 0.1  # nats per token of KL(unsteered || steered) on unrelated text; see RESULTS.md for the choice
AFFINE = (0.25, 0.5, 0.75, 1.0)
ADDITIVE = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def methods(quick: bool) -> dict:
    from mechwork import steering as S

    return {
        "lineas": S.LinEAS(steps=100),
        "linear-act": S.LinearAcT(),
        "diffmeans (middle layer)": S.DiffMeans(),
        "diffmeans (all layers)": S.DiffMeans(sites="resid_post"),
        "iti (mean-pooled probes)": S.ITI(read="mean"),
        "lofit": S.LoFiT(steps=100),
    }


def svg_pareto(rows: list[dict], path: Path, budget: float) -> None:
    """A small self-contained SVG: best rate within the KL budget vs prompts per side, one line per method."""
    W, H, L, B = 640, 360, 60, 40
    ns = sorted({r["n"] for r in rows})
    names = sorted({r["method"] for r in rows})
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    x = {n: L + (W - L - 170) * i / max(1, len(ns) - 1) for i, n in enumerate(ns)}

    def y(v: float) -> float:
        return H - B - (H - 2 * B) * v

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">'
    ]
    parts.append(f'<text x="{L}" y="16" font-size="13">best style rate within KL {budget} vs prompts per side</text>')
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{L}" x2="{W - 170}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>')
        parts.append(f'<text x="{L - 30}" y="{y(v) + 4}">{v:.2f}</text>')
    for n in ns:
        parts.append(f'<text x="{x[n] - 8}" y="{H - B + 16}">{n}</text>')
    for i, m in enumerate(names):
        pts = sorted((r["n"], r["best_rate"]) for r in rows if r["method"] == m)
        c = colours[i % len(colours)]
        d = " ".join(f"{x[n]:.1f},{y(v):.1f}" for n, v in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts += [f'<circle cx="{x[n]:.1f}" cy="{y(v):.1f}" r="3" fill="{c}"/>' for n, v in pts]
        parts.append(f'<text x="{W - 160}" y="{40 + 16 * i}" fill="{c}">{html.escape(m)}</text>')
    parts.append(f'<text x="{(W - 170) / 2}" y="{H - 6}">prompts per side (N)</text></svg>')
    path.write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default=None, help="comma-separated prompts per side (default 8,32,128)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", default="0,1", help="prompt-set seeds; the table reports their mean")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import mechwork
    from mechwork import steering as S
    from mechwork.viz import save_html

    model = mechwork.load_model("toy-mixed", device=args.device)
    ns = [int(v) for v in args.ns.split(",")] if args.ns else ([8, 32] if args.quick else [8, 32, 128])
    n_gen = 32 if args.quick else 64
    kw = dict(n=n_gen, n_text=48, max_new_tokens=24, seed=1, progress=False)
    seeds = [int(v) for v in args.seeds.split(",")]
    points, runs = [], []
    baseline = None
    for n in ns:
        for seed in seeds:
            src, tgt = S.concept_sets("style", to="positive", n=n, seed=seed)
            for name, method in methods(args.quick).items():
                t0 = time.perf_counter()
                st = method.fit(model, src, tgt, concept="style", to="positive")
                fit_s = time.perf_counter() - t0
                grid = AFFINE if st.config.strength_range[1] <= 1 else ADDITIVE
                res = S.sweep(model, {name: st}, strengths=grid, **kw)
                baseline = baseline or res.baseline
                points += [{**r, "method": name, "n": n, "seed": seed, "fit_seconds": fit_s} for r in res.rows]
                best = res.best(budget=BUDGET, by="steerer").get(name)
                runs.append(
                    {
                        "method": name,
                        "n": n,
                        "seed": seed,
                        "best_rate": best["rate"] if best else baseline["rate"],
                        "at_strength": best["strength"] if best else 0.0,
                        "kl": best["kl"] if best else 0.0,
                        "delta_ce": best["delta_ce"] if best else 0.0,
                        "max_rate_any_kl": max(r["rate"] for r in res.rows),
                        "fit_seconds": fit_s,
                        "parameters": st.n_parameters,
                    }
                )
                print(
                    f"N={n:<4} seed {seed} {name:<26} best rate {runs[-1]['best_rate']:.3f} fit {fit_s:.1f}s",
                    flush=True,
                )
    best_rows = []
    for n in ns:
        for name in methods(args.quick):
            rs = [r for r in runs if r["n"] == n and r["method"] == name]
            rates = [r["best_rate"] for r in rs]
            best_rows.append(
                {
                    "method": name,
                    "n": n,
                    "best_rate": sum(rates) / len(rates),
                    "rate_min": min(rates),
                    "rate_max": max(rates),
                    "kl": sum(r["kl"] for r in rs) / len(rs),
                    "delta_ce": sum(r["delta_ce"] for r in rs) / len(rs),
                    "max_rate_any_kl": sum(r["max_rate_any_kl"] for r in rs) / len(rs),
                    "fit_seconds": round(sum(r["fit_seconds"] for r in rs) / len(rs), 2),
                    "parameters": rs[0]["parameters"],
                }
            )
    lin = {r["n"]: r["fit_seconds"] for r in best_rows if r["method"] == "lineas"}
    for r in best_rows:
        r["fit_time_vs_lineas"] = round(r["fit_seconds"] / max(lin.get(r["n"], 1e-9), 1e-9), 3)
    cols = [
        "method",
        "n",
        "best_rate",
        "at_strength",
        "kl",
        "delta_ce",
        "max_rate_any_kl",
        "fit_seconds",
        "fit_time_vs_lineas",
        "parameters",
    ]
    table = print_table(
        best_rows, cols, title=f"best style rate with KL <= {BUDGET} (unsteered {baseline['rate']:.3f})"
    )
    ranking = {}
    for n in ns:
        rows = sorted((r for r in best_rows if r["n"] == n), key=lambda r: -r["best_rate"])
        ranking[n] = [r["method"] for r in rows]
    write_results(
        "steering",
        {
            "budget_kl": BUDGET,
            "baseline": baseline,
            "best": best_rows,
            "points": points,
            "ranking": ranking,
            "generations_per_point": n_gen,
            "table": table,
        },
    )
    svg_pareto(best_rows, RESULTS_DIR / "steering_pareto.svg", BUDGET)
    fig = S.SweepResult([{**p, "label": f"{p['method']} N={p['n']} seed {p['seed']}"} for p in points], baseline).plot(
        title="style rate vs KL, every method and sample count"
    )
    save_html(fig, RESULTS_DIR / "steering_pareto.html")


if __name__ == "__main__":
    main()
