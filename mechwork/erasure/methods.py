"""The registry of erasure methods and the lookup ``method(name, options)`` used by every fitting path."""

from __future__ import annotations

from typing import Any

from ..core.errors import ConfigError
from ._method import Method
from .inlp import INLP
from .leace import LEACE
from .rlace import RLACE

METHODS: dict[str, type[Method]] = {"leace": LEACE, "inlp": INLP, "rlace": RLACE}


def method(spec: str | Method, options: dict[str, Any] | None = None) -> Method:
    """A configured method from a name (``"leace"``) or a method instance, with ``options`` replacing fields."""
    options = options or {}
    if isinstance(spec, Method):
        return spec.with_options(**options)
    if spec not in METHODS:
        raise ConfigError(f"unknown erasure method {spec!r}; choose one of {sorted(METHODS)}")
    return METHODS[spec]().with_options(**options)
