"""Embedding-space projection: factored vs dense |V| x |V| products, and tuned-lens training speed.

1. On a GPT-2-small-shaped random model (50,257 tokens, d_model 768, 12 heads of 64) one head's OV circuit as a
   dense |V| x |V| fp32 matrix takes 10.1 GB (x 144 heads): not attempted on the shared 24 GiB machine. The factored
   projection is timed instead: one row's top-k, every row's top-k (chunked), the global top pairs, the copying
   score (a 64 x 64 eigenproblem). Its memory is the two factors plus one chunk.
2. The peer where dense fits: the same head shape with an 8,192-token vocabulary (dense 268 MB): dense product +
   top-k against the factored path, same results checked.
3. Tuned-lens training throughput (tokens/s) on toy-mixed and on the GPT-2-small shape, against the bare forward
   pass that any training must run (ratio = training / forward).

``python benchmarks/projection_bench.py`` (a few minutes on the CI machine kind; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_table, timeit, write_results

torch.set_num_threads(1)


def gpt2_shape(d_vocab: int, n_layers: int = 12):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=d_vocab,
        act_fn="gelu_new", normalization_type="LNPre", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def factored_rows(model, repeat: int) -> list[dict]:
    from mechwork.projection import copying_score, project

    V = int(model.cfg.d_vocab)
    p = project(model, "ov", layer=5, head=3)
    rows = []
    dense_gb = V * V * 4 / 1e9
    held = (p.left.numel() + p.right.numel()) * 4 / 1e6
    chunk_mb = p._chunk() * V * 4 / 1e6
    rows.append({"vocab": V, "operation": "dense OV matrix (one head)", "seconds": None,
                 "memory": f"{dense_gb:.1f} GB (x {12 * 12} heads): not attempted"})  # fmt: skip
    rows.append({"vocab": V, "operation": "factored OV: build", "seconds": timeit(
        lambda: project(model, "ov", layer=5, head=3), repeat=repeat), "memory": f"{held:.1f} MB factors"})  # fmt: skip
    rows.append({"vocab": V, "operation": "factored: top-10 of one row", "seconds": timeit(
        lambda: p.top(10, row=1000), repeat=repeat), "memory": f"{V * 4 / 1e6:.2f} MB row"})  # fmt: skip
    rows.append({"vocab": V, "operation": "factored: top-10 of every row", "seconds": timeit(
        lambda: p.top_rows(10), repeat=1, warmup=0), "memory": f"{chunk_mb:.0f} MB chunk"})  # fmt: skip
    rows.append({"vocab": V, "operation": "factored: global top-10 pairs", "seconds": timeit(
        lambda: p.top_pairs(10), repeat=1, warmup=0), "memory": f"{chunk_mb:.0f} MB chunk"})  # fmt: skip
    rows.append({"vocab": V, "operation": "copying score (64x64 eig)", "seconds": timeit(
        lambda: copying_score(model, 5, 3), repeat=repeat), "memory": "-"})  # fmt: skip
    return rows


def dense_peer(model, repeat: int) -> list[dict]:
    from mechwork.projection import project

    V = int(model.cfg.d_vocab)
    p = project(model, "ov", layer=0, head=0)

    def dense():
        m = (p.left @ p.right).float()
        return m.topk(10, dim=-1)

    dv, di = dense()
    fv, fi = p.top_rows(10)
    same = bool(torch.equal(di, fi)) or float((dv - fv).abs().max()) < 1e-4
    t_dense = timeit(dense, repeat=repeat)
    t_fact = timeit(lambda: p.top_rows(10), repeat=repeat)
    return [
        {"vocab": V, "operation": "dense product + top-10 per row", "seconds": t_dense,
         "memory": f"{V * V * 4 / 1e6:.0f} MB", "ratio": 1.0, "same_result": same},
        {"vocab": V, "operation": "factored top-10 per row", "seconds": t_fact,
         "memory": f"{p._chunk() * V * 4 / 1e6:.0f} MB chunk", "ratio": t_dense / t_fact, "same_result": same},
    ]  # fmt: skip


def lens_speed(model, name: str, source, steps: int, batch: int, context: int) -> list[dict]:
    from mechwork.projection.tuned import train_tuned_lens

    train_tuned_lens(model, source, steps=2, batch_size=batch, context=context, progress=False)  # warm-up
    t0 = time.perf_counter()
    lens = train_tuned_lens(model, source, steps=steps, batch_size=batch, context=context, progress=False)
    t_train = time.perf_counter() - t0
    n_tok = lens.meta["tokens_seen"]
    toks = torch.randint(4, int(model.cfg.d_vocab), (batch, context))
    with torch.inference_mode():
        t_fwd = timeit(lambda: model(toks), repeat=3)
    fwd_rate = batch * context / t_fwd
    return [
        {"model": name, "measure": "bare forward pass", "tokens/s": fwd_rate, "ratio": 1.0},
        {"model": name, "measure": f"tuned-lens training ({steps} steps)", "tokens/s": n_tok / t_train,
         "ratio": (n_tok / t_train) / fwd_rate},
    ]  # fmt: skip


def lens_quality(steps: int) -> list[dict]:
    """Held-out KL to the final layer of the logit and the tuned lens, per layer, on both shipped models."""
    import mechwork
    from mechwork.projection.tuned import compare_lenses, held_out_tokens, train_tuned_lens

    rows = []
    for name in ("toy-mixed", "toy-induction-2l"):
        model = mechwork.load_model(name, device="cpu", backend="hooked")
        t0 = time.perf_counter()
        lens = train_tuned_lens(model, steps=steps, batch_size=16, lr=3e-3, progress=False)
        seconds = time.perf_counter() - t0
        table = compare_lenses(model, held_out_tokens(model, n=64), lens)
        for r in table.itertuples():
            rows.append({"model": name, "layer": r.layer, "kl_logit": r.kl_to_final_logit,
                         "kl_tuned": r.kl_to_final_tuned, "steps": steps, "train_seconds": seconds})  # fmt: skip
    return rows


def alignment(steps: int, seeds: list[int], folder: str) -> list[dict]:
    """Two (or more) small models trained from different seeds: is the layer order recovered (identity matching)?"""
    import itertools
    from pathlib import Path

    import mechwork
    from mechwork.models.checkpoint import save_checkpoint
    from mechwork.models.config import ModelConfig, TrainConfig
    from mechwork.models.train import train_model, unprocessed_state
    from mechwork.projection import align

    models = {}
    for seed in seeds:
        path = Path(folder) / f"align-s{seed}-{steps}"
        if not (path / "model.safetensors").is_file():
            mc = ModelConfig(name=f"align-s{seed}", n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256,
                             n_ctx=64, d_vocab=213, seed=seed)  # fmt: skip
            tc = TrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup=50, seed=seed)
            model, _ = train_model(mc, tc, progress=False)
            save_checkpoint(path, mc, unprocessed_state(model), card={"steps": steps})
        models[seed] = mechwork.load_model(path, device="cpu", backend="hooked")
    rows = []
    for a, b in itertools.combinations(seeds, 2):
        for reduce in ("mean", "max"):
            al = align(models[a], models[b], reduce=reduce)
            rows.append({"pair": f"s{a}-s{b}", "steps": steps, "reduce": reduce,
                         "kernel_matching": al.matching["all"], "kernel_acc": al.accuracy(),
                         "raw_matching": al.matching_raw["all"], "raw_acc": al.accuracy(raw=True),
                         "kernel_acc_per_type": {k: al.accuracy(kind=k) for k in al.kernel if k != "all"},
                         "raw_acc_per_type": {k: al.accuracy(kind=k, raw=True) for k in al.raw if k != "all"}})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, numbers meaningless")
    ap.add_argument("--part", default="speed", choices=("speed", "quality", "align"),
                    help="speed (default), quality (logit vs tuned lens KL), align (trains small seeds: long)")  # fmt: skip
    ap.add_argument("--align-steps", type=int, default=400)
    ap.add_argument("--align-seeds", default="1,2,3,4")
    ap.add_argument("--align-folder", default="/tmp/mechwork-align-models")
    args = ap.parse_args()
    import mechwork

    if args.part == "quality":
        rows = lens_quality(50 if args.quick else 250)
        print_table(rows, ["model", "layer", "kl_logit", "kl_tuned"], title="held-out KL to the final layer")
        write_results("projection_lens_quality", {"rows": rows, "quick": args.quick})
        return
    if args.part == "align":
        seeds = [int(s) for s in args.align_seeds.split(",")]
        rows = alignment(args.align_steps, seeds, args.align_folder)
        print_table(rows, ["pair", "steps", "reduce", "kernel_matching", "kernel_acc", "raw_matching", "raw_acc"],
                    title="layer alignment of independently trained seeds (identity = correct)")  # fmt: skip
        write_results(f"projection_align_{args.align_steps}", {"rows": rows, "seeds": seeds})
        return

    vocab = 8192 if args.quick else 50257
    big = gpt2_shape(vocab, n_layers=12)
    rows = factored_rows(big, repeat=3)
    print_table(rows, ["vocab", "operation", "seconds", "memory"], title="factored projections, GPT-2-small shape")
    peer = dense_peer(gpt2_shape(2048 if args.quick else 8192, n_layers=1), repeat=3)
    print_table(peer, ["vocab", "operation", "seconds", "memory", "ratio", "same_result"], title="dense peer")
    toy = mechwork.load_model("toy-mixed", device="cpu", backend="hooked")
    lens_rows = lens_speed(toy, "toy-mixed", None, 20 if args.quick else 60, 16, 64)
    big_tok = torch.randint(4, vocab, (64, 64))
    lens_rows += lens_speed(big, "GPT-2-small shape", big_tok, 2 if args.quick else 4, 2, 64)
    print_table(lens_rows, ["model", "measure", "tokens/s", "ratio"], title="tuned-lens training throughput")
    write_results("projection", {"factored": rows, "dense_peer": peer, "tuned_lens": lens_rows, "quick": args.quick})


if __name__ == "__main__":
    main()
