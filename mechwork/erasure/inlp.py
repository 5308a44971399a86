"""INLP: iterative nullspace projection (Ravfogel et al., ACL 2020, arXiv 2004.07667).

Round ``i`` trains a linear classifier ``W_i`` to predict z from ``X P_{i-1}``, then recomputes the projection
onto the intersection of every classifier's nullspace with Ben-Israel's formula (more stable than multiplying
projections)::

    N(W_1) ∩ … ∩ N(W_i) = N(Σ_j P_R(W_j)),   P_i = I - P_R(Σ_j P_R(W_j)).

Rounds stop after ``n_iter``, or as soon as a round's classifier is within ``stop_within`` of the majority rate
on the held-out split (its direction is then not removed: it predicts nothing). No guarantee: each round removes
the direction best for a *classifier*, which under anisotropic features is a poor erasure direction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..core.config import check_choices
from ..core.errors import ConfigError
from ._data import Concept
from ._method import Method, Solution
from .linalg import psd_range_basis, rowspace_projection


@dataclass(frozen=True)
class INLP(Method):
    """Iterative nullspace projection with scikit-learn linear classifiers.

    Parameters
    ----------
    n_iter : int
        Most rounds (each removes one direction for a binary concept, up to ``k`` for ``k`` classes).
    classifier : {"logistic", "svm"}
        ``LogisticRegression`` (lbfgs) or ``LinearSVC`` (primal), both with an intercept, trained on centred data
        divided by one global scale (its root mean square coordinate: directions and nullspaces are unchanged,
        the solvers converge faster and ``C`` means the same whatever the units).
    C : float
        Inverse regularisation strength of the classifiers.
    stop_within : float
        Stop when the held-out accuracy is within this of the majority rate (``0`` disables the rule).
    dev_fraction : float
        Share of the data held out to measure each round's accuracy.
    affine : bool
        Keep the mean: ``r(x) = x - B Bᵀ (x - μ)`` instead of the textbook ``P x``.
    max_samples : int
        Classifiers train on at most this many rows (a random subset; ``0`` = all).
    seed : int
    """

    n_iter: int = 20
    classifier: Literal["logistic", "svm"] = "logistic"
    C: float = 1.0
    stop_within: float = 0.01
    dev_fraction: float = 0.3
    affine: bool = True
    max_samples: int = 20000
    max_iter: int = 1000
    seed: int = 0

    name: ClassVar[str] = "inlp"
    small_sample_note: ClassVar[str] = (
        "INLP's classifiers then separate noise and each round removes a noise direction."
    )

    def __post_init__(self) -> None:
        check_choices(self, "classifier")
        if not isinstance(self.n_iter, int) or self.n_iter < 1:
            raise ConfigError(f"n_iter must be a positive integer, got {self.n_iter!r}")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must lie in (0, 1), got {self.dev_fraction}")

    def _classifier(self) -> Any:
        if self.classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=self.C, max_iter=self.max_iter)
        from sklearn.svm import LinearSVC

        return LinearSVC(C=self.C, dual=False, max_iter=self.max_iter)  # type: ignore[arg-type]

    def solve(self, c: Concept) -> Solution:
        from sklearn.exceptions import ConvergenceWarning

        from .probes import sklearn_threads

        labels = c.require_labels("INLP").numpy()
        X = c.X.double()
        d = c.d
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(c.n)
        n_dev = max(1, int(round(self.dev_fraction * c.n)))
        dev, train = perm[:n_dev], perm[n_dev:]
        if self.max_samples and len(train) > self.max_samples:
            train = train[: self.max_samples]
        maj = float(np.bincount(labels[dev]).max()) / len(dev)
        mu = X[train].mean(0)
        scale = float((X[train] - mu).pow(2).mean().sqrt().clamp_min(1e-12))  # isotropic: keeps the geometry
        Xn = ((X - mu) / scale).numpy()
        P = np.eye(d)
        S = np.zeros((d, d))  # Σ_i P_R(W_i)
        weights: list[np.ndarray] = []
        history: list[dict[str, Any]] = []
        B = np.zeros((d, 0))
        for i in range(self.n_iter):
            clf = self._classifier()
            with warnings.catch_warnings(), sklearn_threads():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Xn[train] @ P, labels[train])
                acc = float(clf.score(Xn[dev] @ P, labels[dev]))
            history.append({"iteration": i + 1, "dev_accuracy": acc, "majority": maj})
            if self.stop_within > 0 and acc <= maj + self.stop_within:
                history[-1]["stopped"] = True
                break
            W = np.atleast_2d(clf.coef_).astype(np.float64)
            weights.append(W)
            S += rowspace_projection(torch.from_numpy(W)).numpy()
            B = psd_range_basis(torch.from_numpy(S)).numpy()
            P = np.eye(d) - B @ B.T
            if B.shape[1] >= d - 1:
                history[-1]["stopped"] = "rank d-1 reached"
                break
        Bt = torch.from_numpy(B)
        W_all = torch.from_numpy(np.concatenate(weights)) if weights else torch.zeros(0, d, dtype=torch.float64)
        bias = mu if self.affine else None
        return Solution(
            Bt,
            Bt.T.clone(),
            bias,
            extras={"classifier_weights": W_all},
            card={"history": history, "majority": maj, "rounds": len(weights)},
        )

    @staticmethod
    def classifier_weights(eraser: Any) -> Tensor:
        """Every classifier INLP trained, stacked ``[rows, d]`` (in the centred coordinates it trained on)."""
        return eraser.extras["classifier_weights"]
