"""Steering benchmark: every method on the style concept at equal sample counts (8, 32, 128 prompts per side).

For each method and sample count: fit on N negative + N positive stories, evaluate at a grid of strengths
(share of positive generations from the neutral opener; KL to the unsteered next-token distribution on unrelated
text), and report the best rate within a fixed fluency budget, the fit time and the parameter count. Tests the
claim of LinEAS (METHODS 7.4-7.5): it is the most sample-efficient method at equal fluency cost.

    python benchmarks/steering_bench.py            # ~10 minutes on 2 shared CPU cores
    python benchmarks/steering_bench.py --quick    # N = 8, 32 only, fewer generations

Writes benchmarks/results/steering.json and steering_pareto.svg (the figure in RESULTS.md); ``--render`` redraws
the figure and prints the markdown table from the JSON; ``--html PATH`` also writes the interactive plotly figure.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, load_json, print_table, write_results  # noqa: E402

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


def _svg_panel(
    parts: list[str],
    ox: float,
    w: float,
    h: float,
    series: dict,
    xs: list,
    xlabel: str,
    title: str,
    log_x: bool = False,
) -> None:
    """One panel of the SVG: series {name: [(x, y), ...]} on [min(xs), max(xs)] x [0, 1]."""
    import math

    L, B, T = 45, 35, 30
    f = (lambda v: math.log10(max(v, 1e-4))) if log_x else (lambda v: float(v))
    lo, hi = min(f(x) for x in xs), max(f(x) for x in xs)

    def X(v: float) -> float:
        return ox + L + (w - L - 10) * (f(v) - lo) / max(hi - lo, 1e-9)

    def Y(v: float) -> float:
        return T + (h - T - B) * (1 - v)

    parts.append(f'<text x="{ox + L}" y="16" font-size="12">{html.escape(title)}</text>')
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{ox + L}" x2="{ox + w - 10}" y1="{Y(v)}" y2="{Y(v)}" stroke="#ddd"/>')
        parts.append(f'<text x="{ox + 12}" y="{Y(v) + 4}">{v:.2f}</text>')
    for x in xs:
        parts.append(f'<text x="{X(x) - 8:.1f}" y="{h - B + 14}">{x:g}</text>')
    parts.append(f'<text x="{ox + w / 2 - 40}" y="{h - 6}">{html.escape(xlabel)}</text>')
    for i, pts in enumerate(series.values()):
        c = COLOURS[i % len(COLOURS)]
        d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{c}"/>' for x, y in pts]


COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def render(payload: dict, out_dir: Path) -> Path:
    """The figure of RESULTS.md (SVG, no plotly needed): (a) best rate within the KL budget vs prompts per side;
    (b) each method's Pareto front (rate vs KL) at N = 32, seed 0."""
    best, points, budget = payload["best"], payload["points"], payload["budget_kl"]
    names = list(dict.fromkeys(r["method"] for r in best))
    ns = sorted({r["n"] for r in best})
    a = {m: [(r["n"], r["best_rate"]) for r in best if r["method"] == m] for m in names}
    n_mid = 32 if 32 in ns else ns[0]
    b = {}
    for m in names:
        rows = sorted(
            (p for p in points if p["method"] == m and p["n"] == n_mid and p["seed"] == 0),
            key=lambda p: (p["kl"], -p["rate"]),
        )
        front, top = [], -1.0
        for p in rows:
            if p["rate"] > top:
                front.append((max(p["kl"], 1e-3), p["rate"]))
                top = p["rate"]
        b[m] = front
    W, H = 980, 340
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
        'font-size="11"><rect width="100%" height="100%" fill="white"/>'
    ]
    _svg_panel(
        parts, 0, 380, H, a, ns, "prompts per side (N, log scale)", f"(a) best rate with KL <= {budget}", log_x=True
    )
    kls = [0.001, 0.01, 0.1, 1.0, 3.0]
    _svg_panel(
        parts, 390, 400, H, b, kls, "KL to unsteered (log scale)", f"(b) Pareto fronts at N = {n_mid}", log_x=True
    )
    for i, m in enumerate(names):
        parts.append(
            f'<text x="{W - 180}" y="{50 + 16 * i}" fill="{COLOURS[i % len(COLOURS)]}">{html.escape(m)}</text>'
        )
    parts.append("</svg>")
    out = out_dir / "steering_pareto.svg"
    out.write_text("\n".join(parts))
    return out


def markdown(payload: dict) -> str:
    """The table of RESULTS.md."""
    head = (
        "| method | N | best rate (KL <= {b}) | seeds min-max | KL there | ΔCE there | best rate at any KL "
        "| fit s | fit / LinEAS | parameters |"
    ).format(b=payload["budget_kl"])
    lines = [head, "|" + "---|" * 10]
    for r in payload["best"]:
        lines.append(
            f"| {r['method']} | {r['n']} | {r['best_rate']:.3f} | {r['rate_min']:.3f}-{r['rate_max']:.3f} | "
            f"{r['kl']:.3f} | {r['delta_ce']:+.3f} | {r['max_rate_any_kl']:.3f} | {r['fit_seconds']:.1f} | "
            f"{r['fit_time_vs_lineas']:.3f} | {r['parameters']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default=None, help="comma-separated prompts per side (default 8,32,128)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", default="0,1", help="prompt-set seeds; the table reports their mean")
    ap.add_argument("--render", action="store_true", help="only redraw the figure and table from the JSON")
    ap.add_argument("--html", default=None, help="also write the interactive figure of every point here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.render:
        payload = load_json(RESULTS_DIR / "steering.json")
        print(render(payload, RESULTS_DIR))
        print(markdown(payload))
        return
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
        "rate_min",
        "rate_max",
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
            "runs": runs,
            "seeds": seeds,
            "points": points,
            "ranking": ranking,
            "generations_per_point": n_gen,
            "table": table,
        },
    )
    payload = load_json(RESULTS_DIR / "steering.json")
    print(render(payload, RESULTS_DIR))
    print(markdown(payload))
    if args.html:
        fig = S.SweepResult([{**p, "label": f"{p['method']} N={p['n']} seed {p['seed']}"} for p in points], baseline)
        save_html(fig.plot(title="style rate vs KL, every method and sample count"), args.html)


if __name__ == "__main__":
    main()
