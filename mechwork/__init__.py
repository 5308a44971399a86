"""mechwork: a workbench for mechanistic interpretability of transformers."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .core.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    MechworkError,
    MechworkWarning,
    ModelNotFoundError,
    NonFiniteError,
    ShapeError,
    SiteError,
    UnsupportedModelError,
)
from .core.sites import Site, site, sites  # noqa: E402

if TYPE_CHECKING:  # imported lazily at run time (see __getattr__)
    from .models import load_model

# the capability subpackages that exist in this installation (a new folder appears here by itself)
_SUBMODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))
_LAZY = {"load_model": ("models", "load_model")}


def __getattr__(name: str) -> Any:  # PEP 562: heavy capabilities import on first use
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mechwork' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_SUBMODULES))


__all__ = [
    "__version__",
    "load_model",
    "sites",
    "site",
    "Site",
    "MechworkError",
    "SiteError",
    "ConfigError",
    "CheckpointError",
    "ShapeError",
    "ModelNotFoundError",
    "NonFiniteError",
    "DataError",
    "UnsupportedModelError",
    "MechworkWarning",
]
