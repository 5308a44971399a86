"""Latent-statistics benchmark: the one-pass statistics vs the SAE's encoding of the same rows, and dashboard size.

Speed (same process, one torch thread, interleaved repeats, medians): tokens/s of
  * peer: the SAE's encoding of every row of an activation store, read in the same windows
    (``encode_topk`` for TopK SAEs: what ``latent_stats`` itself calls; the dense ``encode`` as well);
  * ``latent_stats(sae, store)``: that encoding plus everything the dashboard needs (counts, log-binned
    histograms, de-duplicated top contexts with per-token activations, uniform samples).
Target: the pass costs little more than encoding (ratio near 1).
SAEs: the shipped toy-mixed layer-2 SAE (2048 latents, d_in 128, k 32) and a 16384-latent TopK SAE on the
same rows (random weights: speed does not depend on training).

Size: the dashboard HTML of the shipped SAE (2048 latents) and of 16384 latents at the same per-latent load
(the shipped statistics tiled 8 times: every latent with a real latent's contexts, samples, histogram and logit
effects), plus a real pass of the random 16384-latent SAE.

Labels (``--labels``): the label F1 table of the shipped SAEs (50k held-out tokens of the generated language:
best latent per ground-truth tag, held-out precision / recall / F1); writes benchmarks/results/latents_labels.json.

Run: ``python benchmarks/latents_bench.py [--tokens 65536] [--repeat 3] [--labels]``; writes
benchmarks/results/latents.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from benchmarks._common import print_table, write_results  # noqa: E402


def _median(fns: dict, repeat: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--labels", action="store_true", help="only the label F1 table of the shipped SAEs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.labels:
        return labels_table()
    from test_sae_latents import tile

    import mechwork
    import mechwork.sae as ms
    from mechwork.cache import collect
    from mechwork.data import Corpus
    from mechwork.sae import shipped
    from mechwork.sae.latents.batches import sparse_codes

    model = mechwork.load_model("toy-mixed", device="cpu")
    site = "blocks.2.hook_resid_post"
    tmp = Path(tempfile.mkdtemp())
    store = collect(model, Corpus(77), [site], n_tokens=args.tokens, out=tmp / "store", progress=False)
    x = store[site]
    ctx, n = store.context, store.n_tokens
    big = ms.SAE(ms.SAEConfig(d_in=128, d_sae=16384, k=32, seed=0), meta={"site": site, "model": "toy-mixed"})
    saes = {"shipped 2048": ms.load(shipped.path("toy-mixed", site)), "random 16384": big}
    rows, res = [], {"tokens": n, "context": ctx, "speed": {}, "size": {}}
    batch = 32  # windows per batch, the default of latent_stats
    for name, sae in saes.items():

        def encode_topk(sae=sae):
            for lo in range(0, n, batch * ctx):
                sparse_codes(sae, x[lo : lo + batch * ctx])

        def encode_dense(sae=sae):
            with torch.no_grad():
                for lo in range(0, n, batch * ctx):
                    sae.encode(x[lo : lo + batch * ctx].float())

        def stats(sae=sae):
            ms.latent_stats(sae, store, n_tokens=n, include_special=True)

        t = _median({"encode_topk": encode_topk, "encode": encode_dense, "latent_stats": stats}, args.repeat)
        res["speed"][name] = {k: {"seconds": v, "tokens_per_s": n / v} for k, v in t.items()}
        base = t["encode_topk"]
        for k, v in t.items():
            rows.append({"SAE": name, "measure": k, "tok/s": n / v, "time / encode_topk": v / base})
    print_table(rows, title=f"latent statistics over {n:,} store rows, 1 thread")
    # dashboard size
    srows = []
    st2 = ms.latent_stats(saes["shipped 2048"], model=model, n_tokens=50_000)
    for label, st in (("shipped 2048 (50k tagged tokens)", st2), ("16384 = shipped x 8 (same load)", tile(st2, 8))):
        t0 = time.perf_counter()
        out = st.to_html(tmp / "d.html")
        sec = time.perf_counter() - t0
        size = out.stat().st_size
        res["size"][label] = {"latents": st.d_sae, "bytes": size, "bytes_per_latent": size / st.d_sae, "seconds": sec}
        srows.append(
            {
                "dashboard": label,
                "latents": st.d_sae,
                "MB": size / 1e6,
                "KB/latent": size / st.d_sae / 1e3,
                "write s": sec,
            }
        )
    st16 = ms.latent_stats(big, store, n_tokens=n)
    t0 = time.perf_counter()
    out = st16.to_html(tmp / "d16.html")
    sec = time.perf_counter() - t0
    size = out.stat().st_size
    res["size"]["random 16384 (store rows)"] = {
        "latents": 16384,
        "bytes": size,
        "bytes_per_latent": size / 16384,
        "seconds": sec,
    }
    srows.append(
        {
            "dashboard": "random 16384 (store rows)",
            "latents": 16384,
            "MB": size / 1e6,
            "KB/latent": size / 16384 / 1e3,
            "write s": sec,
        }
    )
    print_table(srows, title="dashboard HTML (one self-contained file)")
    write_results("latents", res)
    return 0


def labels_table() -> int:
    import mechwork
    import mechwork.sae as ms
    from mechwork.sae import shipped

    model = mechwork.load_model("toy-mixed", device="cpu")
    res = {}
    for site in shipped.SITES:
        st = ms.latent_stats(ms.load(shipped.path("toy-mixed", site)), model=model, n_tokens=50_000)
        levels: dict[str, int] = {}
        for lab in st.labels:
            levels[lab.level] = levels.get(lab.level, 0) + 1
        rows = []
        for r in sorted(st.tag_coverage(), key=lambda r: -r["f1"]):
            lab = st.labels[r["latent"]]
            rows.append({k: r[k] for k in ("tag", "latent", "level", "precision", "recall", "f1", "freq")})
            rows[-1].update(n_heldout=lab.n_heldout, top_contexts_with_tag=f"{lab.agree_top[0]}/{lab.agree_top[1]}")
        print_table(rows, title=f"{site}: best latent per tag ({st.n_tokens:,} tokens, levels {levels})")
        res[site] = {"n_tokens": st.n_tokens, "levels": levels, "best_per_tag": rows}
    write_results("latents_labels", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
