"""The shared shape of the three fitting methods: a frozen config whose ``fit(X, z)`` returns an :class:`Eraser`.

``LEACE.fit(X, z, shrinkage=True)`` is a classmethod, as in concept-erasure (options as keywords);
a configured instance fits with ``LEACE(shrinkage=True).fit_eraser(X, z)``. ``fit`` on an instance is refused
(a classmethod would silently ignore the instance's options).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.config import Config
from ..core.errors import ConfigError
from ._data import Concept, concept
from .eraser import Eraser, EraserConfig


@dataclass(frozen=True)
class Solution:
    """What a method's solver returns: the factors of ``x - L R (x - b)`` plus diagnostics."""

    left: Tensor
    right: Tensor
    bias: Tensor | None
    extras: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    card: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Method(Config):
    """Base of ``LEACE``, ``INLP`` and ``RLACE`` (subclasses are frozen dataclasses of their options)."""

    name: ClassVar[str] = "method"
    continuous_ok: ClassVar[bool] = False
    small_sample_note: ClassVar[str] = ""

    def with_options(self, **overrides: Any) -> Method:
        """A copy with fields replaced; unknown names raise ``ConfigError`` listing the valid ones."""
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no option(s) {unknown}; valid options: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def fit(cls, X: Any, z: Any, **options: Any) -> Eraser:
        """Fit an eraser of the concept ``z`` from the representations ``X`` (``options``: the method's fields).

        Parameters
        ----------
        X : Float[Tensor, "... d"]
            Representations, any leading shape.
        z : Tensor
            Class labels with ``X``'s leading shape (binary or multi-class), a one-hot matrix ``[..., k]``, or
            (LEACE only) continuous values.
        **options
            Options of the method (see its fields), e.g. ``rank=2``.

        Returns
        -------
        Eraser
        """
        return cls().with_options(**options).fit_eraser(X, z)

    def fit_eraser(self, X: Any, z: Any) -> Eraser:
        """Fit with this instance's options (``RLACE(rank=2).fit_eraser(X, z)``)."""
        c = concept(X, z, continuous_ok=self.continuous_ok, warn_small=self.small_sample_note)
        return self.fit_concept(c)

    def __getattribute__(self, name: str) -> Any:
        if name == "fit":  # on an instance the classmethod would drop the instance's options without a word
            raise AttributeError(
                f"{type(self).__name__}(...).fit is not available: use {type(self).__name__}.fit(X, z, **options) "
                "or configured_instance.fit_eraser(X, z)"
            )
        return object.__getattribute__(self, name)

    def fit_concept(self, c: Concept) -> Eraser:
        t0 = time.perf_counter()
        sol = self.solve(c)
        seconds = time.perf_counter() - t0
        return self.build(sol, d=c.d, classes=c.classes, n=c.n, seconds=seconds, dtype=c.X.dtype)

    def build(
        self, sol: Solution, *, d: int, classes: tuple[Any, ...], n: int, seconds: float, dtype: torch.dtype
    ) -> Eraser:
        out = torch.float64 if dtype == torch.float64 else torch.float32
        cfg = EraserConfig(
            method=self.method_label,
            d_in=d,
            rank=int(sol.left.shape[1]),
            affine=sol.bias is not None,
            options=self.to_dict(),
            classes=tuple(classes),
            n_samples=int(n),
            fit_seconds=float(seconds),
        )

        def cpu(t: Tensor) -> Tensor:
            return t.detach().to("cpu", out)

        extras = {k: cpu(v) for k, v in sol.extras.items()}
        bias = None if sol.bias is None else cpu(sol.bias)
        return Eraser(cpu(sol.left), cpu(sol.right), bias, cfg, extras, dict(sol.card, fit_seconds=seconds))

    @property
    def method_label(self) -> str:
        return self.name

    def solve(self, c: Concept) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError
