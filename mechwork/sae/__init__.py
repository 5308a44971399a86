"""Sparse autoencoders: TopK (k-sparse, AuxK) and ReLU+L1 SAEs (one module per architecture, one registry), a fast sparse trainer, honest evaluation,
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

from . import registry
from .base import SAE, StepOutput, geometric_median
from .config import MFRPenalty, SAEConfig, TrainConfig, sweep
from .dashboard import render_text, write_dashboard
from .evaluate import evaluate, splice
from .io import load, read_card, save
from .latents import LatentCard, LatentStats, latent_stats
from .mfr import MFRSAE, MFRConfig, mfr_saes
from .model import SAE_CLASSES, register_architecture
from .relu import JumpReLUConfig, JumpReLUSAE, ReLUConfig, ReLUSAE
from .synthetic import GroupedSynthetic, SyntheticDictionary, recovery
from .topk import TopKConfig, TopKSAE
from .trainer import JointLoss, TrainResult, train


def register_saelens() -> list[str]:
    """Register mechwork's architectures with SAELens (imports SAELens; same as ``import mechwork.sae.saelens``).

    Only needed for folders of mechwork-only architectures (SAE neural operators), ``portable=False`` folders
    and folders of mechwork <= 0.1: TopK / ReLU / MFR folders use SAELens's own names and load without it.
    """
    from .saelens import register

    return register()


__all__ = [
    "SAE",
    "SAEConfig",
    "TopKSAE",
    "TopKConfig",
    "ReLUSAE",
    "ReLUConfig",
    "JumpReLUSAE",
    "JumpReLUConfig",
    "registry",
    "MFRConfig",
    "MFRSAE",
    "MFRPenalty",
    "mfr_saes",
    "GroupedSynthetic",
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
