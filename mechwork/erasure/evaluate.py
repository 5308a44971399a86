"""Judging an eraser: fresh probes on erased held-out data (linear, and an MLP for non-linear leakage) against
the majority rate, distortion (mean squared change, and in the whitened norm), rank, fit time; and behaviour:
the concept task's accuracy with the eraser hooked in, next to unrelated tasks (IOI, induction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError
from ..core.kind import model_kind
from ._data import concept
from .eraser import Eraser
from .linalg import whitening
from .probes import sklearn_probe_score


def probe_report(
    eraser: Eraser | Callable[[Tensor], Tensor],
    X: Float[Tensor, "... d"],
    z: Tensor,
    *,
    probes: Sequence[str] = ("linear", "mlp"),
    test_fraction: float = 0.5,
    seed: int = 0,
    before: bool = True,
) -> dict[str, Any]:
    """Probe accuracy after (and before) erasure, distortion, rank and fit time, on data held out from fitting.

    The held-out rows are split: fresh probes train on one part of the erased data and are scored on the other.
    ``eraser`` is an :class:`Eraser` or any callable ``[n, d] -> [n, d]`` (e.g. a peer library's eraser).

    Returns
    -------
    dict
        ``majority``; ``<probe>_accuracy`` / ``<probe>_loss`` after erasure and ``<probe>_accuracy_before``;
        ``mse`` (mean ‖r(x) - x‖²), ``mse_whitened`` (mean ‖Σ^{-1/2}(r(x) - x)‖², Σ the held-out covariance),
        ``rank``, ``fit_seconds``, ``n``.
    """
    c = concept(X, z, continuous_ok=False, warn=False)
    X64 = c.X.double()
    erased = eraser(c.X).double()
    delta = erased - X64
    W, _ = whitening(torch.cov(X64.T))
    labels = c.labels.numpy()  # type: ignore[union-attr]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(c.n)
    n_test = int(round(test_fraction * c.n))
    if n_test < 2 or c.n - n_test < 2:
        raise ConfigError(f"too few held-out rows ({c.n}) to train and test probes")
    te, tr = perm[:n_test], perm[n_test:]
    out: dict[str, Any] = {
        "n": c.n,
        "majority": float(np.bincount(labels[te]).max()) / len(te),
        "rank": getattr(eraser, "rank", None),
        "fit_seconds": eraser.config.fit_seconds if isinstance(eraser, Eraser) else None,
        "mse": float((delta**2).sum(1).mean()),
        "mse_whitened": float(((delta @ W) ** 2).sum(1).mean()),
        "mean_sq_norm": float((X64**2).sum(1).mean()),
    }
    E, Xn = erased.float().numpy(), c.X.float().numpy()
    for kind in probes:
        after = sklearn_probe_score(kind, E[tr], labels[tr], E[te], labels[te], seed=seed)
        out[f"{kind}_accuracy"], out[f"{kind}_loss"] = after.accuracy, after.loss
        if before:
            out[f"{kind}_accuracy_before"] = sklearn_probe_score(
                kind, Xn[tr], labels[tr], Xn[te], labels[te], seed=seed
            ).accuracy
    return out


def behaviour(
    model: Any,
    hook: Any = None,
    *,
    concept_task: str = "gender",
    tasks: Sequence[str] = ("ioi", "induction"),
    n: int = 256,
    seed: int = 1,
) -> dict[str, dict[str, float]]:
    """Task metrics with ``hook`` active (an :class:`ErasureHook`, e.g. ``eraser.hook(model, site)``; ``None``: clean).

    Returns ``{task: {"accuracy": ..., "metric": ...}}`` for the concept task and every unrelated task, on the
    test split with ``seed`` (held out from fitting, which uses the train split).
    """
    from contextlib import nullcontext

    from ..tasks import get

    out: dict[str, dict[str, float]] = {}
    with hook if hook is not None else nullcontext():
        for name in (concept_task, *tasks):
            r = get(name).evaluate(model, n, seed=seed)
            out[name] = {"accuracy": r["accuracy"], "metric": r["metric"]}
    return out


def evaluate(
    eraser: Any,
    model: Any = None,
    data: Any = "gender",
    *,
    X: Tensor | None = None,
    z: Tensor | None = None,
    site: str | None = None,
    n: int = 1000,
    seed: int = 1,
    positions: Any = None,
    behaviour_n: int = 256,
    tasks: Sequence[str] = ("ioi", "induction"),
    probes: Sequence[str] = ("linear", "mlp"),
) -> dict[str, Any]:
    """Everything that says what an eraser removed and what it cost.

    Either give held-out ``X`` and ``z`` (probes and distortion only), or a ``model`` (and a labelled task,
    ``"gender"`` by default): held-out activations are collected at the eraser's site (prompts of the test split,
    ``seed``), probes are trained on them before and after erasure, and the model's behaviour is measured with the
    eraser hooked in (``behaviour_n`` prompts per task; not on a model without an LM head, whose tasks have no
    logits to score). A :class:`~mechwork.erasure.Scrubber` is evaluated at
    its last site (the activations there have been erased at every site upstream, too).
    """
    from .labelled import labelled, labelled_activations
    from .scrubber import Scrubber

    if model is None:
        if X is None or z is None:
            raise ConfigError("evaluate needs held-out X and z, or a model")
        return {"probes": probe_report(eraser, X, z, probes=probes, seed=seed)}
    pairs = list(eraser) if isinstance(eraser, Scrubber) else [(site or eraser.config.site, eraser)]
    if pairs[-1][0] is None:
        raise ConfigError("the eraser does not record its site; pass site=")
    last_site, last = pairs[-1]
    pos = positions or (last.config.positions or "all").split("/")[0]
    lab = labelled(data, model=model, n=n, seed=seed, split="test", positions=pos)
    Xh, zh = labelled_activations(model, lab, last_site, upstream=pairs[:-1])
    report: dict[str, Any] = {
        "site": last_site,
        "method": last.method,
        "probes": probe_report(last, Xh, zh, probes=probes, seed=seed),
    }
    if (isinstance(data, str) or getattr(data, "name", None)) and model_kind(model).lm_head:
        task_name = data if isinstance(data, str) else data.name
        hook = eraser.hook(model) if isinstance(eraser, Scrubber) else eraser.hook(model, last_site)
        report["behaviour_before"] = behaviour(
            model, None, concept_task=task_name, tasks=tasks, n=behaviour_n, seed=seed
        )
        report["behaviour_after"] = behaviour(
            model, hook, concept_task=task_name, tasks=tasks, n=behaviour_n, seed=seed
        )
    return report
