"""The per-layer picture: fit an eraser at each site, then probe and run the model with it hooked in."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .evaluate import behaviour, probe_report
from .from_model import fit
from .labelled import labelled, labelled_activations
from .probes import sklearn_probe_score


def residual_sites(model: Any) -> list[str]:
    """Every residual-stream point: ``resid_pre.0 … resid_pre.{L-1}`` and ``resid_post.{L-1}``."""
    L = int(model.cfg.n_layers)
    return [f"resid_pre.{i}" for i in range(L)] + [f"resid_post.{L - 1}"]


def layer_sweep(
    model: Any,
    data: str = "gender",
    sites: Sequence[str] | None = None,
    methods: Sequence[str] = ("leace",),
    *,
    n_fit: int = 2000,
    n_eval: int = 600,
    behaviour_n: int = 256,
    fit_positions: str = "all",
    stratify: str | None = None,
    probe_positions: str = "last",
    tasks: Sequence[str] = ("ioi", "induction"),
    probes: Sequence[str] = ("linear", "mlp"),
    seed: int = 0,
    method_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (site, method): probe accuracies before/after at ``probe_positions`` of held-out prompts,
    distortion, rank, fit time, and the task metrics with the eraser hooked in (plus one ``site=None`` row with
    the clean model's behaviour).

    Fitting uses ``n_fit`` prompts of the train split; probes and behaviour use the test split (``seed + 1``).
    """
    sites = list(sites or residual_sites(model))
    opts = method_options or {}
    clean = behaviour(model, None, concept_task=data, tasks=tasks, n=behaviour_n, seed=seed + 1)
    rows: list[dict[str, Any]] = [{"site": None, "method": "none", **_flat(clean)}]
    held = labelled(data, model=model, n=n_eval, seed=seed + 1, split="test", positions=probe_positions)
    it = [(s, m) for s in sites for m in methods]
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="erasure sweep")
    for s, m in it:
        t0 = time.perf_counter()
        eraser = fit(
            model, data, s, m, n=n_fit, seed=seed, positions=fit_positions, stratify=stratify, **opts.get(m, {})
        )
        fit_wall = time.perf_counter() - t0
        Xh, zh = labelled_activations(model, held, s)
        rep = probe_report(eraser, Xh, zh, probes=probes, seed=seed)
        beh = behaviour(model, eraser.hook(model, s), concept_task=data, tasks=tasks, n=behaviour_n, seed=seed + 1)
        rows.append(
            {
                "site": s,
                "method": m,
                "label": f"{m} [{eraser.config.positions}]",
                "positions": eraser.config.positions,
                "rank": eraser.rank,
                "fit_seconds": eraser.config.fit_seconds,
                "fit_wall_seconds": fit_wall,
                **{k: v for k, v in rep.items() if k not in ("rank", "fit_seconds")},
                **_flat(beh),
            }
        )
    return rows


def _flat(beh: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{task}_{k}": v for task, r in beh.items() for k, v in r.items()}


def probe_grid(
    model: Any,
    data: str = "gender",
    sites: Sequence[str] | None = None,
    *,
    n: int = 600,
    seed: int = 1,
    split: str = "test",
) -> dict[str, Any]:
    """Where is the concept? Held-out linear-probe accuracy at every (site, token position), before any erasure.

    Returns
    -------
    dict
        ``accuracy`` ``Tensor [sites, positions]`` (each probe trained on half of the prompts, scored on the
        other half), ``majority`` per position, ``sites``, and ``positions`` labelled with the first prompt's words.
    """
    from ..core.prompts import str_tokens

    sites = list(sites or residual_sites(model))
    lab = labelled(data, model=model, n=n, seed=seed, split=split, positions="all")
    pos = lab.mask.nonzero()[:, 1]
    cols = sorted(int(j) for j in pos.unique())
    words = str_tokens(model, lab.tokens[0])
    acc = torch.full((len(sites), len(cols)), float("nan"))
    majority = torch.full((len(cols),), float("nan"))
    for i, s in enumerate(sites):
        X, z = labelled_activations(model, lab, s)
        for k, j in enumerate(cols):
            sel = pos == j
            Xj, zj = X[sel].numpy(), z[sel].numpy()
            h = len(zj) // 2
            if len(np.unique(zj[:h])) < 2:
                continue
            acc[i, k] = sklearn_probe_score("linear", Xj[:h], zj[:h], Xj[h:], zj[h:]).accuracy
            majority[k] = float(np.bincount(zj[h:]).max()) / (len(zj) - h)
    labels = [f"{j}: {words[j]}" if j < len(words) else str(j) for j in cols]
    return {"accuracy": acc, "majority": majority, "sites": sites, "positions": labels}
