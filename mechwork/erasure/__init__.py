"""Concept erasure: INLP, R-LACE and LEACE behind one interface, erasers as hooks, judged by probes and behaviour.

>>> eraser = mechwork.erasure.LEACE.fit(X, z)            # or INLP / RLACE; options as keywords
>>> eraser(X)                                            # any leading shape
>>> with eraser.hook(model, "resid_pre.2"):              # inside the forward pass
...     logits = model(tokens)
>>> eraser.save("gender-leace/"); mechwork.erasure.load("gender-leace/")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._data import ErasureWarning
from .eraser import Eraser, EraserConfig, ErasureHook
from .inlp import INLP
from .leace import LEACE, LeaceFitter
from .rlace import RLACE

METHODS = {"leace": LEACE, "inlp": INLP, "rlace": RLACE}


def load(path: str | Path, *, device: Any = "cpu") -> Eraser:
    """Load an eraser artefact folder."""
    return Eraser.load(path, device=device)


__all__ = ["INLP", "RLACE", "LEACE", "LeaceFitter", "Eraser", "EraserConfig", "ErasureHook", "ErasureWarning", "METHODS", "load"]
