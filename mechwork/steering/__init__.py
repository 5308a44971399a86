"""Concept steering: fitted, frozen, saved steerers turned into hooks (METHODS 7).

>>> from mechwork import steering
>>> src, tgt = steering.concept_sets("style", to="positive", n=32)
>>> st = steering.LinEAS(steps=300).fit(model, src, tgt, concept="style", to="positive")
>>> with st.apply(model, strength=0.8):
...     logits = model(tokens)
>>> steering.generate(model, "the day began .", steerer=st, max_new_tokens=20)
>>> steering.evaluate(model, st, strength=1.0)      # rate, KL, ΔCE, IOI / induction side effects
"""

from .base import Method
from .baselines import ITI, DiffMeans, LinearAcT, linear_act_map
from .data import Prompts, concept_sets, encode, gender_texts, neutral_texts, style_texts
from .evaluate import evaluate, fluency, gender_rate, side_effects, style_rate
from .generate import generate
from .lineas import LinEAS
from .lofit import LoFiT, completion_loss
from .plots import behaviour_vs_cost, support_figure
from .positions import PositionState
from .steerer import Steerer, SteererConfig, load
from .sweep import SweepResult, sweep

METHODS = {"lineas": LinEAS, "lofit": LoFiT, "diffmeans": DiffMeans, "iti": ITI, "linear-act": LinearAcT}

__all__ = [
    "Method",
    "LinEAS",
    "LoFiT",
    "DiffMeans",
    "ITI",
    "LinearAcT",
    "METHODS",
    "Steerer",
    "SteererConfig",
    "load",
    "generate",
    "evaluate",
    "style_rate",
    "gender_rate",
    "gender_texts",
    "fluency",
    "side_effects",
    "sweep",
    "SweepResult",
    "concept_sets",
    "style_texts",
    "neutral_texts",
    "encode",
    "Prompts",
    "PositionState",
    "linear_act_map",
    "completion_loss",
    "behaviour_vs_cost",
    "support_figure",
]
