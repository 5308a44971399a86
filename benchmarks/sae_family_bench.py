"""SAE family benchmark: MFR against independent training, SAE neural operators on function-space ground truth.

    python benchmarks/sae_family_bench.py [--part mfr|mfr_paper|toy|cost|no|windows|all] [--quick]

* ``mfr``: MFR's synthetic data (METHODS 3.9, per-sample supports; scaled down: 128-d, 256 features in 8
  groups, 16 active, 0.99^rank) — N tied TopK SAEs trained together with the penalty vs the same SAEs with
  weight 0 (independent) on the same batches for the same steps; Hungarian MCC of each decoder against the
  true features, FVU, seconds. N = 2 and 4.
* ``toy``: toy-mixed ``resid_post.1``, N = 2 untied TopK SAEs with and without MFR at equal L0 (same k):
  FVU and CE-loss recovered on held-out text.
* ``cost``: seconds of one penalty evaluation (forward + backward) per matching at growing widths, with the
  cubic fit of the Hungarian time extrapolated to 16k latents.
* ``no``: SAE neural operators on :class:`mechwork.sae.functional.FunctionDictionary` (8 concepts, half smooth,
  grid 64): recovery (shift-invariant MCC after Hungarian matching; smooth and non-smooth concepts apart), sine
  distance, coherence, steps to MCC 0.9, code-support precision/recall (convolutional SAEs), NMSE at the
  training grid and at unseen grids 32 and 128.

* ``mfr_paper`` (not in ``all``: about 20 minutes): the paper's full-size synthetic setting, 2 SAEs, weights 0,
  0.3 and 3.
* ``windows``: an SAE-FNO on windows of 16 positions of toy-mixed ``resid_post.1`` next to a TopK SAE on the same
  positions, scored by the ground-truth tags their units fire on.

Writes ``benchmarks/results/sae_family.json``. CPU, one thread, machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment, print_table  # noqa: E402

import mechwork.sae as ms  # noqa: E402
from mechwork.sae.functional import (  # noqa: E402
    FunctionDictionary,
    coherence,
    dictionary_recovery,
    nmse,
    shift_cosines,
    support_recovery,
)
from mechwork.sae.mfr import MutualFeaturePenalty, mfr_saes  # noqa: E402
from mechwork.sae.synthetic import recovery  # noqa: E402


# ------------------------------------------------------------------------------------------------ MFR
def mfr_synthetic(n_saes: int, weight: float, *, steps: int, seed: int, gen: ms.GroupedSynthetic, x: torch.Tensor):
    base = ms.SAEConfig(architecture="mfr", d_sae=gen.n_features, k=gen.n_active, b_dec_init="zeros", seed=seed)
    cfg = ms.TrainConfig(
        saes=mfr_saes(base, n_saes, seed_step=1),
        batch_size=512,
        tokens=512 * steps,
        lr=1e-2,
        warmup_steps=10,
        decay_fraction=0.0,
        log_every=steps,
        data_seed=seed,
        mfr=ms.MFRPenalty(weight=weight, warmup_steps=100) if weight > 0 else None,
    )
    t0 = time.perf_counter()
    res = ms.train(cfg, x, progress=False)
    secs = time.perf_counter() - t0
    test, _ = gen.sample(4096, seed=99)
    mcc, fvu = [], []
    with torch.no_grad():
        for s in res.saes:
            mcc.append(recovery(s.W_dec, gen.features)["mcc"])
            fvu.append(float((s(test) - test).pow(2).sum() / (test - test.mean(0)).pow(2).sum()))
    return {
        "n_saes": n_saes,
        "weight": weight,
        "seed": seed,
        "mcc_mean": sum(mcc) / len(mcc),
        "mcc_best": max(mcc),
        "fvu_mean": sum(fvu) / len(fvu),
        "seconds": secs,
        "mcc": mcc,
    }


def part_mfr(quick: bool) -> dict:
    gen = ms.GroupedSynthetic(d=128, n_features=256, n_groups=8, n_active=16, seed=0)
    x, _ = gen.sample(40_000 if quick else 120_000, seed=7)
    steps = 150 if quick else 600
    rows = []
    for n in (2,) if quick else (2, 4):
        for seed in (0,) if quick else (0, 1):
            for w in (0.0, 0.3):
                rows.append(mfr_synthetic(n, w, steps=steps, seed=seed, gen=gen, x=x))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "mcc"}), flush=True)
    print_table(rows, ["n_saes", "weight", "seed", "mcc_mean", "mcc_best", "fvu_mean", "seconds"], "MFR, synthetic")
    g = {k: getattr(gen, k) for k in ("d", "n_features", "n_groups", "n_active", "decay", "seed")}
    return {"generator": g, "steps": steps, "rows": rows}


def part_mfr_paper(quick: bool) -> dict:
    """The paper's synthetic setting (256-d, 512 features, 12 groups, 32 active, d_sae 512, k 32, tied, lr 1e-2),
    batch 1024 for 1000 steps on a pool of 200k samples; weights 0 (independent), 0.3 and the authors' 3."""
    gen = ms.GroupedSynthetic()
    x, _ = gen.sample(200_000, seed=7)
    rows = []
    for w in (0.0, 0.3, 3.0):
        base = ms.SAEConfig(architecture="mfr", d_sae=512, k=32, b_dec_init="zeros")
        cfg = ms.TrainConfig(
            saes=mfr_saes(base, 2),
            batch_size=1024,
            tokens=1024 * (100 if quick else 1000),
            lr=1e-2,
            warmup_steps=10,
            decay_fraction=0.0,
            log_every=1000,
            mfr=ms.MFRPenalty(weight=w, warmup_steps=100) if w > 0 else None,
        )
        t0 = time.perf_counter()
        res = ms.train(cfg, x, progress=False)
        mcc = [recovery(s.W_dec, gen.features)["mcc"] for s in res.saes]
        rows.append({"weight": w, "mcc": mcc, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def part_windows(quick: bool) -> dict:
    """An SAE-FNO on windows of 16 positions of toy-mixed resid_post.1 (channels = d_model) and a TopK SAE on the
    same positions: which ground-truth tags do their units fire on?"""
    from mechwork.models import load_model
    from mechwork.sae.windows import position_windows, tag_alignment

    model = load_model("toy-mixed", device="cpu")
    n_win = 800 if quick else 3000
    x, tags = position_windows(model, "resid_post.1", n_windows=n_win, window=16, stride=8, seed=0)
    cells = x.permute(0, 2, 1).reshape(-1, x.shape[1])
    steps = 60 if quick else 300
    out = {}
    for name, kw, data, bs in (
        ("fno", dict(architecture="fno", d_sae=32, modes=9, iterations=2), x, 64),
        ("topk", dict(architecture="topk", d_sae=512, k=16), cells, 1024),
    ):
        cfg = ms.TrainConfig(saes=(ms.SAEConfig(**kw),), batch_size=bs, tokens=bs * steps, lr=3e-3, log_every=steps)
        res = ms.train(cfg, data, progress=False)
        s = res.sae
        with torch.no_grad():
            codes = s.encode(x) if name == "fno" else s.encode(cells).reshape(n_win, 16, -1).permute(0, 2, 1)
        rows = sorted(tag_alignment(codes, tags), key=lambda r: -r["f1"])
        out[name] = {
            "fvu": res.final_metrics()[s.cfg.label]["fvu"],
            "units_f1_over_0_5": sum(r["f1"] > 0.5 for r in rows),
            "mean_firing_fraction": sum(r["freq"] for r in rows) / max(len(rows), 1),
            "top": rows[:8],
        }
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "top"}), json.dumps(rows[:3]), flush=True)
    return {"n_windows": n_win, "steps": steps, **out}


def part_toy(quick: bool) -> dict:
    from mechwork.models import load_model

    model = load_model("toy-mixed", device="cpu")
    rows = []
    tokens = 60_000 if quick else 300_000
    for w in (0.0, 0.3):
        base = ms.SAEConfig(architecture="mfr", tied=False, d_sae=1024, k=16)
        cfg = ms.TrainConfig(
            saes=mfr_saes(base, 2),
            model="toy-mixed",
            site="resid_post.1",
            tokens=tokens,
            batch_size=1024,
            lr=2e-3,
            stream_buffer=16384,
            log_every=50,
            mfr=ms.MFRPenalty(weight=w) if w > 0 else None,
        )
        t0 = time.perf_counter()
        res = ms.train(cfg, model=model, progress=False)
        secs = time.perf_counter() - t0
        for s in res.saes:
            ev = ms.evaluate(s, model, n_tokens=4000 if quick else 12000, seed=1234)
            rows.append(
                {
                    "weight": w,
                    "sae": s.cfg.label,
                    "l0": ev["l0"],
                    "fvu": ev["fvu"],
                    "ce_recovered": ev["ce_loss_recovered"],
                    "seconds": secs,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows, title="MFR on toy-mixed resid_post.1 (equal L0)")
    return {"tokens": tokens, "rows": rows}


def part_cost(quick: bool) -> dict:
    rows = []
    widths = (256, 512, 1024) if quick else (256, 512, 1024, 2048)
    for m in widths:
        saes = [ms.SAE(ms.SAEConfig(architecture="mfr", tied=False, d_in=256, d_sae=m, k=8, seed=i)) for i in range(2)]
        row = {"d_sae": m}
        for matching in ("hungarian", "cached", "max"):
            pen = MutualFeaturePenalty(ms.MFRPenalty(weight=1.0, warmup_steps=0, matching=matching, refresh_every=50))
            pen.begin_step(saes, 0, 10)  # the cached assignment is made here (not timed per step)
            x = torch.zeros(1, 256)
            pen(saes, [], x).backward()  # warm-up (scipy import, allocations)
            t0 = time.perf_counter()
            reps = 3
            for _ in range(reps):
                pen(saes, [], x).backward()
            row[f"{matching}_s"] = (time.perf_counter() - t0) / reps
        rows.append(row)
        print(json.dumps(row), flush=True)
    # Hungarian time ~ a * m^3 fitted on the largest width, extrapolated
    a = rows[-1]["hungarian_s"] / rows[-1]["d_sae"] ** 3
    extra = {"hungarian_s_at_16384_extrapolated": a * 16384**3, "cosine_matrix_gib_at_16384": 16384**2 * 4 / 2**30}
    print_table(rows, title="MFR penalty: seconds per pair per step (forward + backward)")
    print(json.dumps(extra))
    return {"rows": rows, **extra}


# ---------------------------------------------------------------------------------------------- SAE-NO
def _concepts(s, n: int) -> torch.Tensor:
    if s.architecture == "fno":
        return s.concepts(n).reshape(s.d_sae, -1)
    if s.architecture == "cnn":
        return s.concepts().reshape(s.d_sae, -1)
    if s.architecture == "lifted":
        return s.dictionary().reshape(s.d_sae, -1)
    return s.W_dec.reshape(s.d_sae, -1)


NO_MODELS = {
    "sae": dict(architecture="topk", d_sae=512, k=4),
    "lifted": dict(architecture="lifted", d_sae=512, k=4, lift=4),
    "cnn": dict(architecture="cnn", d_sae=8, kernel=21, iterations=3),
    "fno_full": dict(architecture="fno", d_sae=8, modes=33, iterations=3),
    "fno_m12": dict(architecture="fno", d_sae=8, modes=12, iterations=3),
}


def operator_row(name: str, kw: dict, fd: FunctionDictionary, x: torch.Tensor, steps: int, n: int = 64) -> dict:
    true = fd.concepts(n)
    curve: list[tuple[int, float]] = []

    def cb(step: int, saes: list) -> None:
        with torch.no_grad():
            curve.append((step, dictionary_recovery(_concepts(saes[0], n), true)["mcc"]))

    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(b_dec_init="zeros", **kw),),
        batch_size=256,
        tokens=256 * steps,
        lr=3e-3,
        warmup_steps=20,
        log_every=25,
    )
    t0 = time.perf_counter()
    s = ms.train(cfg, x, progress=False, callback=cb).sae
    row: dict = {"model": name, "seconds": time.perf_counter() - t0}
    with torch.no_grad():
        learned = _concepts(s, n)
        rec = dictionary_recovery(learned, true)
        per = torch.tensor(rec["per_concept"])
        sm = fd.smooth_mask
        conv = s.architecture in ("cnn", "fno")
        row.update(
            mcc=rec["mcc"],
            mcc_smooth=float(per[sm].mean()),
            mcc_rough=float(per[~sm].mean()),
            sine_max=rec["sine_max"],
            coherence_max=coherence(learned, shift_invariant=conv)["max"],
            coherence_mean_max=coherence(learned, shift_invariant=conv)["mean_max"],
            steps_to_mcc_0_9=next((st for st, m in curve if m >= 0.9), None),
            mcc_at_50=next((m for st, m in curve if st >= 50), None),
        )
        pos, amp = fd.codes(2000, seed=5)
        for grid in (32, 64, 128):
            xt = fd.render(pos, amp, grid)
            try:
                row[f"nmse_{grid}"] = nmse(s(xt), xt)
            except Exception:  # the flat and lifted SAEs live on their training grid
                row[f"nmse_{grid}"] = None
        if conv:
            xt = fd.render(pos, amp, n)
            _, shifts = shift_cosines(true, learned)
            matched = rec["matched"]
            sup = support_recovery(
                s.encode(xt), pos, amp, matched, torch.stack([shifts[c, j] for c, j in enumerate(matched)])
            )
            row.update(support_precision=sup["precision"], support_recall=sup["recall"])
    row["curve"] = curve
    return row


def part_no(quick: bool) -> dict:
    fd = FunctionDictionary()
    x = fd.sample(20_000, 64, seed=1)
    steps = 150 if quick else 500
    rows = []
    for name, kw in NO_MODELS.items():
        rows.append(operator_row(name, kw, fd, x, steps))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)
    cols = ["model", "mcc", "mcc_smooth", "mcc_rough", "sine_max", "coherence_max", "coherence_mean_max"]
    cols += [
        "steps_to_mcc_0_9",
        "mcc_at_50",
        "nmse_32",
        "nmse_64",
        "nmse_128",
        "support_precision",
        "support_recall",
        "seconds",
    ]
    print_table(rows, cols, "SAE neural operators, function-space recovery (train grid 64)")
    return {"steps": steps, "concepts": list(fd.names), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("mfr", "mfr_paper", "toy", "cost", "no", "windows", "all"), default="all")
    ap.add_argument("--quick", action="store_true", help="a fraction of the steps (smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out_path = RESULTS_DIR / "sae_family.json"
    old = json.loads(out_path.read_text()) if out_path.is_file() else {}
    parts = ("mfr", "toy", "cost", "no", "windows") if args.part == "all" else (args.part,)
    fns = {"mfr": part_mfr, "mfr_paper": part_mfr_paper, "toy": part_toy, "cost": part_cost, "no": part_no}
    fns["windows"] = part_windows
    RESULTS_DIR.mkdir(exist_ok=True)
    for p in parts:  # written after every part, so a later failure keeps the earlier ones
        old[p] = {**fns[p](args.quick), "quick": args.quick}
        old["environment"] = {**environment(), "note": "CPU shared with other jobs; one thread"}
        out_path.write_text(json.dumps(old, indent=1, default=str))
        print(f"wrote {out_path} ({p})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
