"""Sparse autoencoders: TopK (k-sparse, AuxK) and ReLU+L1 SAEs, a fast sparse trainer, honest evaluation,
SAELens interop, latent statistics and dashboards.

Public API::

    cfg = TrainConfig(saes=(SAEConfig(d_sae=2048, k=32),), store="acts/", site="resid_post.2")
    result = train(cfg)                      # or train(cfg, activations=tensor_or_iterator)
    sae = result.sae; sae.encode(x); sae.decode(f); sae(x); sae.save(path)
    sae = load(path)                         # mechwork or SAELens folders
    evaluate(sae, model, source, site)       # FVU, L0, dead/dense fractions, CE-loss recovered, KL
    with splice(model, sae, site): ...       # the SAE's reconstruction replaces the activation
    stats = latent_stats(sae, source, model=model); stats[406]; stats.to_html(path)   # what latents mean
"""

from __future__ import annotations

from .config import SAEConfig, TrainConfig, sweep
from .dashboard import render_text, write_dashboard
from .evaluate import evaluate, splice
from .io import load, read_card, save
from .latents import LatentCard, LatentStats, latent_stats
from .model import SAE, SAE_CLASSES, StepOutput, geometric_median, register_architecture
from .saelens import install_hook as _install_hook
from .saelens import register as register_saelens
from .synthetic import SyntheticDictionary, recovery
from .trainer import JointLoss, TrainResult, train

_install_hook()

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "TrainResult",
    "StepOutput",
    "JointLoss",
    "train",
    "sweep",
    "load",
    "save",
    "read_card",
    "register_saelens",
    "geometric_median",
    "evaluate",
    "splice",
    "latent_stats",
    "LatentStats",
    "LatentCard",
    "render_text",
    "write_dashboard",
    "SyntheticDictionary",
    "recovery",
    "register_architecture",
    "SAE_CLASSES",
]
