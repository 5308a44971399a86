"""Probes that judge an erasure: a fast torch logistic regression (used inside R-LACE, on any device) and the
scikit-learn linear and MLP probes :func:`mechwork.erasure.evaluate` reports."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def sklearn_threads() -> Any:
    """Limit scikit-learn's BLAS/OpenMP pools to torch's thread count (``torch.set_num_threads``): on a busy machine
    a BLAS pool wider than the caller's share spin-waits and made INLP's classifiers about 10x slower here."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=torch.get_num_threads())


@dataclass(frozen=True)
class ProbeScore:
    """Held-out accuracy and log-loss of a probe trained on a separate split."""

    accuracy: float
    loss: float


def _logits(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    return X @ W + b


def _loss(logits: Tensor, y: Tensor, binary: bool) -> Tensor:
    if binary:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def torch_logistic(
    X: Float[Tensor, "n d"], y: Int[Tensor, " n"], n_classes: int, *, l2: float = 1e-4, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Fit an L2-regularised logistic (softmax) regression by full-batch L-BFGS where ``X`` lives."""
    binary = n_classes == 2
    out = 1 if binary else n_classes
    W = torch.zeros(X.shape[1], out, dtype=X.dtype, device=X.device, requires_grad=True)
    b = torch.zeros(out, dtype=X.dtype, device=X.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _loss(_logits(X, W, b), y, binary) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


@torch.no_grad()
def torch_probe_score(
    X_train: Tensor, y_train: Tensor, X_test: Tensor, y_test: Tensor, n_classes: int, **kw: Any
) -> ProbeScore:
    """Train :func:`torch_logistic` on one split, score accuracy and log-loss on the other."""
    W, b = torch_logistic(X_train, y_train, n_classes, **kw)
    logits = _logits(X_test, W, b)
    binary = n_classes == 2
    loss = float(_loss(logits, y_test, binary))
    pred = (logits[:, 0] > 0).long() if binary else logits.argmax(1)
    return ProbeScore(float((pred == y_test).float().mean()), loss)


def sklearn_probe_score(
    kind: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, seed: int = 0
) -> ProbeScore:
    """A fresh scikit-learn probe: ``linear`` (logistic regression) or ``mlp`` (one hidden layer of 64 ReLUs).

    Inputs are standardised with the training split's statistics first (the erased directions then stay
    degenerate; nothing is re-created).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        clf = LogisticRegression(max_iter=2000)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, early_stopping=True, random_state=seed)
    else:
        raise ValueError(f"probe kind must be 'linear' or 'mlp', got {kind!r}")
    model = make_pipeline(StandardScaler(), clf)
    with warnings.catch_warnings(), sklearn_threads():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
        proba = model.predict_proba(X_test)
        acc = float(model.score(X_test, y_test))
    return ProbeScore(acc, float(log_loss(y_test, proba, labels=model.classes_)))
