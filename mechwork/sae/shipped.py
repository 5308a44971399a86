"""The SAEs shipped in ``sae_checkpoints/<model>/<site>/``: their recipe, how they were trained and measured.

``python -m mechwork.sae.shipped [SITE ...]`` retrains them (streaming activations of ``toy-mixed`` on the
generated corpus, one CPU thread, fixed seeds) and writes each folder with a ``card.json`` holding the
config, the training tokens and the evaluation on held-out text (FVU, L0, dead fraction, CE-loss recovered,
KL) plus the ground-truth tags its latents match best.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .config import SAEConfig, TrainConfig

MODEL = "toy-mixed"
SITES = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
ROOT = Path(__file__).resolve().parents[2] / "sae_checkpoints"
EVAL_SEED = 1234  # held-out generated text (Corpus(EVAL_SEED, split="test"))
CARD_TOKENS = 50_000  # tokens behind the card's numbers
CHECK_TOKENS = 6_000  # tokens the test re-measures (a prefix of the card's)


def path(model: str, site: str) -> Path:
    """Folder of a shipped SAE."""
    return ROOT / model / site


def model_sha256(model: str = MODEL) -> str:
    """Hash of the shipped model's weights: the cards record it, so a retrained model is noticed."""
    import hashlib

    from ..models.zoo import ENTRIES

    return hashlib.sha256((ENTRIES[model].path / "model.safetensors").read_bytes()).hexdigest()


def recipe(site: str) -> TrainConfig:
    """The training run of the shipped SAE at ``site``."""
    return TrainConfig(
        saes=(SAEConfig(d_sae=2048, k=32, name="sae"),),
        model=MODEL,
        site=site,
        tokens=2_000_000,
        batch_size=2048,
        lr=2e-3,
        warmup_steps=100,
        decay_fraction=0.3,
        data_seed=0,
        stream_buffer=65536,
        log_every=50,
    )


def train_shipped(site: str, *, root: Path = ROOT, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and write the shipped SAE at ``site``; returns its card."""
    import torch

    from ..models import load_model
    from .evaluate import evaluate
    from .latents import latent_stats
    from .trainer import train

    torch.set_num_threads(1)
    model = load_model(MODEL, device="cpu")
    cfg = recipe(site)
    t0 = time.perf_counter()
    result = train(cfg, model=model, progress=progress)
    seconds = time.perf_counter() - t0
    sae = result.sae
    ev = evaluate(sae, model, n_tokens=CARD_TOKENS, seed=EVAL_SEED)
    freq = ev.pop("latent_freq")
    sc = latent_stats(sae, model=model, n_tokens=20_000, seed=EVAL_SEED + 1)
    coverage = sc.tag_coverage()
    card = {
        "model": MODEL,
        "model_sha256": model_sha256(),
        "site": site,
        "tokens": result.tokens,
        "train_seconds": round(seconds, 1),
        "threads": 1,
        "config": cfg.to_dict(),
        "training": result.final_metrics()["sae"],
        "eval": {"seed": EVAL_SEED, "split": "test", **{k: v for k, v in ev.items() if k != "latent_freq_hist"}},
        "latent_freq_hist": ev["latent_freq_hist"],
        "max_latent_freq": float(freq.max()),
        "tags": {
            "n_latents_f1_over_0.5": sum(r["f1"] > 0.5 for r in sc.tag_table()),  # held-out F1 of each label
            "best_latent_per_tag": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in coverage
            ],
        },
    }
    sae.meta["tokens"] = result.tokens
    from .io import saelens_note

    card["saelens"] = saelens_note(sae)
    sae.save(path(MODEL, site) if root == ROOT else root / MODEL / site, card=card)
    return card


def main(argv: list[str] | None = None) -> int:
    sites = (argv if argv is not None else sys.argv[1:]) or list(SITES)
    for site in sites:
        card = train_shipped(site)
        e = card["eval"]
        print(
            f"{site}: FVU {e['fvu']:.4f}  L0 {e['l0']:.1f}  dead {e['dead_fraction']:.2%}  "
            f"CE recovered {e['ce_loss_recovered']:.4f} (mean-ablation {e['ce_loss_recovered_mean_ablation']:.4f})  "
            f"KL {e['kl_sae']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
