"""What SAE latents mean: statistics from one streamed pass, logit effects, labels that say how sure they are.

Public API::

    stats = latent_stats(sae, source, model=model)   # or sae.latents(source, model=model)
    stats[406]                                       # LatentCard: renders in Jupyter, .text() for terminals
    stats.table(); stats.best(10); stats.to_html("sae.html")
"""

from .card import LatentCard
from .compute import latent_stats
from .labels import NARROW_PRECISION, STRONG_F1, WEAK_F1, Label
from .logits import LogitEffects, logit_effects
from .stats import LatentStats

__all__ = [
    "latent_stats",
    "LatentStats",
    "LatentCard",
    "Label",
    "LogitEffects",
    "logit_effects",
    "STRONG_F1",
    "WEAK_F1",
    "NARROW_PRECISION",
]
