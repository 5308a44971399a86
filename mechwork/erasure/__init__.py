"""Concept erasure: INLP, R-LACE and LEACE behind one interface, erasers as hooks, judged by probes and behaviour.

>>> eraser = mechwork.erasure.LEACE.fit(X, z)            # or INLP / RLACE; options as keywords
>>> eraser(X)                                            # any leading shape
>>> eraser = mechwork.erasure.fit(model, "gender", "resid_pre.1", "leace")   # from the model's activations
>>> eraser = mechwork.erasure.fit(model, (texts, labels), "resid_pre.1")      # your own labelled texts
>>> with eraser.hook(model, "resid_pre.1"):              # inside the forward pass
...     logits = model(tokens)
>>> mechwork.erasure.evaluate(eraser, model, "gender")   # probes, distortion, behaviour before/after
>>> eraser.save("gender-leace/"); mechwork.erasure.load("gender-leace/")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._data import ErasureWarning
from .eraser import Eraser, EraserConfig, ErasureHook
from .evaluate import behaviour, evaluate, probe_report
from .from_model import causal_order, fit, scrub
from .inlp import INLP
from .labelled import Labelled, labelled, labelled_activations
from .leace import LEACE, LeaceFitter
from .methods import METHODS
from .plots import plot_sweep
from .rlace import RLACE
from .scrubber import Scrubber
from .store import fit_store
from .sweep import layer_sweep, probe_grid, residual_sites


def load(path: str | Path, *, device: Any = "cpu") -> Eraser | Scrubber:
    """Load an eraser (or scrubber) artefact folder."""
    from ..core.io import read_json

    raw = read_json(Path(path) / "cfg.json", what="erasure config")
    if isinstance(raw, dict) and raw.get("format") == "mechwork-scrubber":
        return Scrubber.load(path, device=device)
    return Eraser.load(path, device=device)


__all__ = [
    "INLP",
    "RLACE",
    "LEACE",
    "LeaceFitter",
    "Eraser",
    "EraserConfig",
    "ErasureHook",
    "ErasureWarning",
    "METHODS",
    "load",
    "fit",
    "fit_store",
    "scrub",
    "Scrubber",
    "causal_order",
    "labelled_activations",
    "labelled",
    "Labelled",
    "evaluate",
    "probe_report",
    "behaviour",
    "layer_sweep",
    "probe_grid",
    "residual_sites",
    "plot_sweep",
]
