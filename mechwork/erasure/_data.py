"""Validation of the ``(X, z)`` pairs every eraser is fitted on.

``X`` is any float array ``[..., d]``; ``z`` has ``X``'s leading shape (class labels, or one continuous value)
or that shape plus one trailing axis (one-hot or continuous concept matrix). Everything bad raises a
:class:`~mechwork.MechworkError` subclass that says what was expected and what was found.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.errors import ConfigError, DataError, NonFiniteError, ShapeError


class ErasureWarning(UserWarning):
    """A fit that runs but whose result deserves caution (e.g. fewer samples than dimensions)."""


@dataclass(frozen=True)
class Concept:
    """Validated fitting data.

    Attributes
    ----------
    X : Float[Tensor, "n d"]
        The representations, flattened over their leading axes.
    Z : Float[Tensor, "n k"]
        The concept as a matrix: one column for a binary or continuous concept, one-hot columns for
        ``k > 2`` classes.
    labels : Int[Tensor, "n"] or None
        Class indices ``0..n_classes-1`` (``None`` for a continuous concept).
    classes : tuple
        The original class values, in index order (empty for a continuous concept).
    """

    X: Float[Tensor, "n d"]
    Z: Float[Tensor, "n k"]
    labels: Int[Tensor, " n"] | None
    classes: tuple[Any, ...]

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def majority(self) -> float:
        """Accuracy of always predicting the most frequent class."""
        if self.labels is None:
            raise ConfigError("a continuous concept has no majority rate")
        return float(torch.bincount(self.labels, minlength=self.n_classes).max()) / self.n

    def require_labels(self, method: str) -> Int[Tensor, " n"]:
        if self.labels is None:
            raise ConfigError(
                f"{method} trains classifiers and needs class labels (integers, or one-hot rows); the concept given "
                "is continuous. Use LEACE for a continuous concept."
            )
        return self.labels


def as_tensor(a: Any, *, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    try:
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{what} must be a tensor or array, got {type(a).__name__}") from e


def check_x(X: Any, d: int | None = None, *, what: str = "X") -> Tensor:
    """``X`` as a floating tensor ``[..., d]`` with finite values (``d`` checked when given)."""
    X = as_tensor(X, what=what)
    if not X.is_floating_point():
        X = X.float()
    if X.ndim < 1 or X.shape[-1] == 0:
        raise ShapeError(f"{what} must have shape [..., d] with d > 0, got {tuple(X.shape)}")
    if d is not None and X.shape[-1] != d:
        raise ShapeError(f"{what} has width {X.shape[-1]} but the eraser was fitted on width d={d}")
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        rows = bad.reshape(-1, X.shape[-1]).any(-1).nonzero().flatten()
        raise NonFiniteError(
            f"{what} contains {int(bad.sum())} NaN/inf values in {rows.numel()} rows (first rows: {rows[:5].tolist()}); "
            "erasers need finite activations"
        )
    return X


def concept(X: Any, z: Any, *, continuous_ok: bool = True, warn_small: str | None = None, warn: bool = True) -> Concept:
    """Validate and flatten ``(X, z)``.

    Parameters
    ----------
    X : array [..., d]
    z : array [...] or [..., k]
        Class labels (any integer or string-free values with at least two distinct values), a one-hot matrix,
        or (when ``continuous_ok``) continuous values.
    continuous_ok : bool
        Accept a continuous concept (LEACE); INLP and R-LACE need classes.
    warn_small : str, optional
        Text appended to the warning given when there are fewer samples than dimensions.
    warn : bool
        Give that warning at all (off where nothing is fitted, e.g. when probing).

    Raises
    ------
    ShapeError
        ``X`` and ``z`` disagree in their leading shape.
    NonFiniteError
        NaN or inf in ``X`` or ``z``.
    DataError
        A single class, or fewer than two samples.
    """
    X = check_x(X)
    z = as_tensor(z, what="z")
    lead = tuple(X.shape[:-1])
    if tuple(z.shape) == lead:
        matrix = False
    elif z.ndim == len(lead) + 1 and tuple(z.shape[:-1]) == lead:
        matrix = True
    else:
        raise ShapeError(
            f"X has {X.shape[:-1].numel()} samples (leading shape {lead}) but z has shape {tuple(z.shape)}; "
            "z must have X's leading shape (labels) or that shape plus one axis (one-hot / continuous matrix)"
        )
    d = X.shape[-1]
    X = X.reshape(-1, d)
    n = X.shape[0]
    if n < 2:
        raise DataError(f"need at least 2 samples to fit an eraser, got {n}")
    if z.is_floating_point() and not bool(torch.isfinite(z).all()):
        raise NonFiniteError(f"z contains {int((~torch.isfinite(z)).sum())} NaN/inf values")
    if matrix:
        Zm = z.reshape(n, -1).to(torch.float64)
        onehot = bool(((Zm == 0) | (Zm == 1)).all()) and bool((Zm.sum(1) == 1).all())
        if onehot:
            labels = Zm.argmax(1)
            labels, classes = _index(labels)
            if len(classes) < 2:
                raise DataError(_one_class(classes))
        else:
            if not continuous_ok:
                raise ConfigError("this method needs class labels; z is a continuous matrix (rows are not one-hot)")
            if bool((Zm.std(0) == 0).all()):
                raise DataError("z is constant: every column has zero variance, there is no concept to erase")
            _warn_small(n, d, warn_small if warn else False)
            return Concept(X, Zm, None, ())
    else:
        flat = z.reshape(n)
        integral = not flat.is_floating_point() or bool((flat == flat.round()).all())
        if not integral:
            if not continuous_ok:
                raise ConfigError("this method needs class labels; z holds non-integer values")
            if float(flat.double().std()) == 0.0:
                raise DataError("z is constant; there is no concept to erase")
            _warn_small(n, d, warn_small if warn else False)
            return Concept(X, flat.to(torch.float64)[:, None], None, ())
        labels, classes = _index(flat)
        if len(classes) < 2:
            raise DataError(_one_class(classes))
    _warn_small(n, d, warn_small if warn else False)
    k = len(classes)
    if k == 2:
        Z = labels.to(torch.float64)[:, None]
    else:
        Z = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    return Concept(X, Z, labels, classes)


def _index(values: Tensor) -> tuple[Tensor, tuple[Any, ...]]:
    classes, labels = torch.unique(values, return_inverse=True)
    return labels.long(), tuple(c.item() for c in classes)


def _one_class(classes: tuple[Any, ...]) -> str:
    only = classes[0] if classes else None
    return (
        f"z has a single class (every label is {only!r}); erasing a concept needs at least two classes. "
        "Check that the labels are aligned with X and that the prompts cover every class."
    )


def _warn_small(n: int, d: int, extra: str | None | Literal[False]) -> None:
    if n > d or extra is False:
        return
    msg = (
        f"fitting on n={n} samples in d={d} dimensions (n <= d): the sample covariance is singular and every "
        "labelling of the points is linearly separable, so what is fitted partly describes noise."
    )
    warnings.warn(msg + (" " + extra if extra else ""), ErasureWarning, stacklevel=3)


def check_rank(rank: int, d: int, *, what: str = "rank") -> int:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"{what} must be a positive integer, got {rank!r}")
    if rank >= d:
        raise ConfigError(
            f"{what}={rank} must be smaller than the dimension d={d}: removing {rank} of {d} dimensions would leave "
            "nothing (or a single constant) to predict from"
        )
    return int(rank)
