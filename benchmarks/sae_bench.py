"""SAE benchmark: training-step throughput of mechwork's TopK SAE vs SAELens's TopKTrainingSAE, and dictionary
recovery on synthetic data.

Speed (same process, same thread count, same batch, interleaved repeats):
  * floor: the encoder matmul alone (``x @ W_enc``, the one dense op a TopK step cannot avoid);
  * mechwork sparse step (the trainer's step: loss, sparse backward, decoder-gradient projection, clipping,
    fused Adam, decoder renormalisation, dead-latent counters);
  * mechwork dense reference step (same math, plain autograd);
  * SAELens ``TopKTrainingSAE`` trained by ``SAETrainer._train_step`` (its defaults: Adam, clipping, AuxK).
Settings: d_in 512 x 16384 latents and GPT-2-small-sized 768 x 24576, k 32, batch 2048.

Quality: synthetic dictionary (METHODS 3.6/3.9 setting: 256-d, 512 unit features, 32 active, coefficients
U[0, 1]); mechwork TopK and SAELens TopK trained on the same batches for the same steps; MMCS / MCC.

Run: ``python benchmarks/sae_bench.py [--threads 1,2] [--quick]``; writes benchmarks/results/sae.json. The recovery
runs use the first thread count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from benchmarks._common import load_json, print_table, write_results  # noqa: E402

SETTINGS = [(512, 16384, 32, 2048), (768, 24576, 32, 2048)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fns: dict, repeat: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so that machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _mechwork_step(d: int, m: int, k: int, x: torch.Tensor, *, sparse: bool):
    import mechwork.sae as ms
    from mechwork.sae.trainer import _Run

    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_in=d, d_sae=m, k=k, b_dec_init="zeros"),),
        batch_size=x.shape[0],
        tokens=x.shape[0] * 10_000,
        sparse=sparse,
        lr=2e-4,
        device=str(x.device),
    )
    sae = ms.SAE(cfg.saes[0], device=x.device)
    run = _Run(cfg, [sae], None, 10_000, x.device, None)
    return lambda: run.one_step(x)


def _saelens_trainer(d: int, m: int, k: int, batch: int, device, *, lr: float, autocast: bool = False, **extra):
    """SAELens's own ``SAETrainer`` over a ``TopKTrainingSAE``, its learning rate set through its trainer config
    (constant schedule: ``lr_end = lr``; setting the optimizer's lr afterwards would be undone by its scheduler)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k, device=str(device)))
    tcfg = SAETrainerConfig(
        total_training_samples=batch * 10_000,
        train_batch_size_samples=batch,
        lr=lr,
        lr_end=lr,
        device=str(device),
        autocast=autocast,
        **extra,
    )
    return SAETrainer(tcfg, sae, data_provider=iter(()))


def _saelens_fit_step(trainer, batch: torch.Tensor) -> None:
    """One step as ``SAETrainer.fit`` takes it (public ``step``, then the step counter), without its logging."""
    trainer.step(batch)
    trainer.n_training_steps += 1


def _lrs(trainer) -> list[float]:
    return [float(g["lr"]) for g in trainer.optimizer.param_groups]


def _saelens_step(d: int, m: int, k: int, x: torch.Tensor, *, autocast: bool = False):
    trainer = _saelens_trainer(d, m, k, x.shape[0], x.device, lr=2e-4, autocast=autocast)
    return lambda: trainer._train_step(trainer.sae, x), trainer


def speed(settings, repeat: int, device: torch.device) -> list[dict]:
    rows = []
    for d, m, k, b in settings:
        torch.manual_seed(0)
        x = torch.randn(b, d, device=device)
        W = torch.randn(d, m, device=device) / d**0.5
        sl_step, _ = _saelens_step(d, m, k, x)
        fns = {
            "floor": lambda x=x, W=W: x @ W,
            "mechwork": _mechwork_step(d, m, k, x, sparse=True),
            "mechwork_dense": _mechwork_step(d, m, k, x, sparse=False),
            "saelens": sl_step,
        }
        t = _median_time(fns, repeat=repeat, warmup=2)
        tps = {name: b / sec for name, sec in t.items()}
        rows.append(
            {
                "threads": torch.get_num_threads(),
                "d_in": d,
                "d_sae": m,
                "k": k,
                "batch": b,
                "device": device.type,
                "floor_tok_s": tps["floor"],
                "mechwork_tok_s": tps["mechwork"],
                "mechwork_dense_tok_s": tps["mechwork_dense"],
                "saelens_tok_s": tps["saelens"],
                "x_saelens": tps["mechwork"] / tps["saelens"],
                "x_floor": tps["mechwork"] / tps["floor"],
            }
        )
        del fns, sl_step
    return rows


def recovery_bench(
    steps: int,
    batch: int,
    device: torch.device,
    *,
    lr: float = 1e-3,
    widths: tuple[int, ...] = (512, 1024),
    impls: tuple[str, ...] = ("mechwork", "saelens"),
) -> list[dict]:
    from mechwork.sae.synthetic import SyntheticDictionary

    sd = SyntheticDictionary(d=256, n_features=512, n_active=32, seed=0)
    rows = []
    for width in widths:
        if "mechwork" in impls:
            rows.append(_mechwork_recovery(sd, width, steps, batch, device, lr))
            print(rows[-1], flush=True)
        if "saelens" in impls:
            rows += _saelens_recovery(sd, width, steps, batch, device, lr)
    return rows


def _mechwork_recovery(sd, width: int, steps: int, batch: int, device: torch.device, lr: float) -> dict:
    import mechwork.sae as ms
    from mechwork.sae.synthetic import recovery

    t0 = time.perf_counter()
    res = ms.train(
        ms.TrainConfig(
            saes=(ms.SAEConfig(d_sae=width, k=32),),
            batch_size=batch,
            tokens=batch * steps,
            lr=lr,
            warmup_steps=50,
            device=str(device),
        ),
        sd.batches(batch, seed=1),
        progress=False,
    )
    sec = time.perf_counter() - t0
    ev = ms.evaluate(res.sae, None, sd.sample(8192, seed=7)[0].to(device))
    return {
        "impl": "mechwork",
        "d_sae": width,
        "steps": steps,
        "seconds": sec,
        "lr": lr,
        "schedule": "warm-up 50 steps, linear decay (mechwork defaults)",
        **recovery(res.sae.W_dec, sd.features),
        "fvu": ev["fvu"],
        "dead_fraction": ev["dead_fraction"],
    }


def _saelens_recovery(sd, width: int, steps: int, batch: int, device: torch.device, lr: float) -> list[dict]:
    """SAELens TopK on the same batches, same steps, same lr: (a) its defaults otherwise (dead-latent window 1000
    steps, longer than the run, so AuxK never sees a dead latent); (b) its dead window set to mechwork's 1M
    tokens, the peer's best fair setting for the dead-latent column."""
    from mechwork.sae.synthetic import recovery

    rows = []
    for variant, extra in (("defaults", {}), ("dead window 1M tokens", {"dead_feature_window": 1_000_000 // batch})):
        data = sd.batches(batch, seed=1)  # the same batches, regenerated (seeded)
        trainer = _saelens_trainer(256, width, 32, batch, device, lr=lr, **extra)
        t0 = time.perf_counter()
        for i in range(steps):
            _saelens_fit_step(trainer, next(data).to(device))
            if i < 3:  # the lr in effect is the stated one (SAELens's scheduler owns the optimizer's lr)
                assert _lrs(trainer) == [lr], f"SAELens lr after step {i + 1}: {_lrs(trainer)}, stated {lr}"
        sec = time.perf_counter() - t0
        assert _lrs(trainer) == [lr], _lrs(trainer)
        sl = trainer.sae
        with torch.no_grad():
            xs = sd.sample(8192, seed=7)[0].to(device)
            f = sl.encode(xs)
            err = (xs - sl.decode(f)).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
        rows.append(
            {
                "impl": f"saelens ({variant})",
                "d_sae": width,
                "steps": steps,
                "seconds": sec,
                "lr": _lrs(trainer)[0],
                "schedule": "constant (SAELens default), asserted in effect",
                "dead_feature_window_steps": trainer.cfg.dead_feature_window,
                **recovery(sl.W_dec.detach(), sd.features),
                "fvu": float(err),
                "dead_fraction": float(((f != 0).sum(0) == 0).float().mean()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts for the speed table (default 1,2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="first setting only, short recovery run")
    ap.add_argument("--recovery-steps", type=int, default=500)
    ap.add_argument("--no-recovery", action="store_true", help="speed table only")
    ap.add_argument("--widths", default="512,1024", help="d_sae of the recovery runs (default 512,1024)")
    ap.add_argument("--impls", default="mechwork,saelens", help="recovery runs of mechwork, saelens or both")
    ap.add_argument(
        "--no-speed", action="store_true", help="recovery table only; keeps the speed rows of the existing results file"
    )
    ap.add_argument("--out-name", default="sae", help="results file name (benchmarks/results/<name>.json)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    threads = [int(t) for t in str(args.threads).split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = SETTINGS[:1] if args.quick else SETTINGS
    rows = []
    for t in [] if args.no_speed else threads:
        torch.set_num_threads(t)
        rows += speed(settings, args.repeat, device)
    if rows:
        print_table(
            rows,
            [
                "threads",
                "d_in",
                "d_sae",
                "k",
                "batch",
                "floor_tok_s",
                "mechwork_tok_s",
                "mechwork_dense_tok_s",
                "saelens_tok_s",
                "x_saelens",
                "x_floor",
            ],
            title=f"TopK training step, tokens/s ({device.type})",
        )
    torch.set_num_threads(threads[0])
    widths = tuple(int(w) for w in args.widths.split(","))
    impls = tuple(args.impls.split(","))
    steps = 100 if args.quick else args.recovery_steps
    rec = [] if args.no_recovery else recovery_bench(steps, 4096, device, widths=widths, impls=impls)
    if rec:
        print_table(
            rec,
            ["impl", "d_sae", "steps", "seconds", "mmcs", "mcc", "recovered_0.9", "fvu", "dead_fraction"],
            title="Synthetic dictionary recovery: 256-d, 512 features, 32 active, batch 4096",
        )
    if not args.no_write:
        payload = {
            "threads": threads,
            "repeat": args.repeat,
            "speed": rows,
            "recovery": rec,
            "targets": {"x_saelens": 3.0, "x_floor": 0.4},
            "notes": "medians of interleaved repeats on a shared, noisy machine; compare ratios only",
        }
        if args.no_speed:  # keep the earlier speed table (and say when each part was measured)
            old = load_json(Path(__file__).parent / "results" / f"{args.out_name}.json")
            payload = {**{k: v for k, v in old.items() if k not in ("benchmark", "environment")}, "recovery": rec}
            payload["date_speed"] = old.get("date_speed", old.get("date"))
            payload["notes"] = old.get("notes", "") + "; the recovery table was re-run alone later (date)"
        write_results(args.out_name, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
