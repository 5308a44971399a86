"""The shared shape of the three fitting methods: a frozen config whose ``fit(X, z)`` returns an :class:`Eraser`.

``LEACE.fit(X, z)`` (defaults), ``LEACE(shrinkage=True).fit(X, z)`` and ``LEACE.fit(X, z, shrinkage=True)``
are the same call: ``fit`` works on the class and on an instance, and keyword overrides replace fields.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.config import Config
from ..core.errors import ConfigError
from ._data import Concept, concept
from .eraser import Eraser, EraserConfig


class hybridmethod:
    """A method that binds to a default instance when called on the class."""

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f
        functools.update_wrapper(self, f)  # type: ignore[arg-type]

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        target = obj if obj is not None else cls()
        return functools.wraps(self.f)(functools.partial(self.f, target))


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

    @hybridmethod
    def fit(self, X: Any, z: Any, **overrides: Any) -> Eraser:
        """Fit an eraser of the concept ``z`` from the representations ``X``.

        Parameters
        ----------
        X : Float[Tensor, "... d"]
            Representations, any leading shape.
        z : Tensor
            Class labels with ``X``'s leading shape (binary or multi-class), a one-hot matrix ``[..., k]``, or
            (LEACE only) continuous values.
        **overrides
            Options of the method (see its fields), e.g. ``rank=2``.

        Returns
        -------
        Eraser
        """
        m = self.with_options(**overrides)
        c = concept(X, z, continuous_ok=m.continuous_ok, warn_small=m.small_sample_note)
        return m.fit_concept(c)

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
        cast = lambda t: None if t is None else t.detach().to("cpu", out)  # noqa: E731
        extras = {k: v.detach().to("cpu", out) for k, v in sol.extras.items()}
        return Eraser(cast(sol.left), cast(sol.right), cast(sol.bias), cfg, extras, dict(sol.card, fit_seconds=seconds))

    @property
    def method_label(self) -> str:
        return self.name

    def solve(self, c: Concept) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError
