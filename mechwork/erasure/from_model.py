"""Fitting erasers from a model: one eraser at a site from labelled activations (with any upstream erasers
hooked in), or several sites scrubbed in causal order, each fitted on activations already erased upstream.

One eraser fitted on rows from many positions removes the direction that separates the classes *on average over
positions*; where the concept sits in a different direction at each position (the prediction position after
attention has moved it there, say) that leaves it in place. ``stratify="position"`` (LEACE) asks instead for
``Cov(r(X), z | position) = 0`` at every position: LEACE with one concept column per position,
``z_j = 1[pos = j] (z - E[z | pos = j])``; the eraser is still one affine map applied everywhere (rank up to the
number of positions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.hooks import capture, model_device
from ..core.sites import Site, resolve
from ._method import Method
from .eraser import Eraser
from .labelled import Labelled, labelled, labelled_activations, stratified_concept
from .methods import method as _method
from .scrubber import Scrubber


def _fit_rows(m: Method, X: Tensor, z: Tensor, data: Labelled, stratify: str | None) -> Eraser:
    if stratify is None:
        return m.fit_eraser(X, z)
    from .leace import LEACE

    if stratify != "position":
        raise ConfigError(f"stratify must be None or 'position', got {stratify!r}")
    if not isinstance(m, LEACE):
        raise ConfigError(
            "stratify='position' is a LEACE option (a constraint per position); INLP and R-LACE train one classifier"
        )
    groups = data.mask.nonzero()[:, 1]  # the row order of collect(): row-major over the mask
    return m.fit_eraser(X, stratified_concept(z, groups))


def _stamp(eraser: Eraser, model: Any, s: Site, data: Labelled, stratify: str | None = None) -> Eraser:
    spec = getattr(model, "mechwork_spec", None) or getattr(model.cfg, "model_name", None)
    pos = data.positions + (f"/stratified-by-{stratify}" if stratify else "")
    cfg = dataclasses.replace(eraser.config, model=spec, site=s.name, task=data.task, positions=pos)
    return dataclasses.replace(eraser, config=cfg)


def fit(
    model: Any,
    data: Any,
    site: str | Site,
    method: str | Method = "leace",
    *,
    n: int = 2000,
    seed: int = 0,
    positions: Any = "all",
    stratify: str | None = None,
    batch_size: int = 128,
    upstream: Sequence[tuple[str, Eraser]] = (),
    **options: Any,
) -> Eraser:
    """Fit an eraser of a labelled concept at one site of a model.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    data : str, Task, PromptBatch, (texts, labels) or (tokens, labels)
        ``"gender"`` draws ``n`` prompts (split ``train``, ``seed``), rendered through the model's tokenizer;
        your own labelled texts: ``mechwork.tasks.from_texts(model, texts, labels)`` or ``(texts, labels)``.
    site : str
        Where the eraser will sit, e.g. ``"resid_pre.2"``.
    method : {"leace", "inlp", "rlace"} or a configured method (``RLACE(rank=2)``)
    positions : {"all", "content", "last"} or Bool[Tensor, "batch pos"]
        Which token rows carry the label.
    stratify : {None, "position"}
        LEACE only: remove the concept within every position rather than on average (module docstring).
    upstream : list of (site, Eraser)
        Erasers hooked in while collecting (used by :func:`scrub`).
    **options
        Options of the method (``rank=2``, ``n_iter=10``...).
    """
    m = _method(method, options)
    lab = labelled(data, model=model, n=n, seed=seed, positions=positions)
    s = resolve(model, site)[0]
    X, z = labelled_activations(model, lab, s, upstream=upstream, batch_size=batch_size)
    return _stamp(_fit_rows(m, X, z, lab, stratify), model, s, lab, stratify)


def causal_order(model: Any, site_names: Sequence[str | Site]) -> list[Site]:
    """The sites in the order a forward pass reaches them (measured with one short pass)."""
    site_list = resolve(model, site_names)
    probe = torch.zeros((1, 2), dtype=torch.long, device=model_device(model))
    fired = capture(model, probe, site_list)  # insertion order = the order the hooks fired
    by_name = {s.name: s for s in site_list}
    return [by_name[n] for n in fired]


def scrub(
    model: Any,
    data: Any,
    sites: Sequence[str | Site],
    method: str | Method = "leace",
    *,
    n: int = 2000,
    seed: int = 0,
    positions: Any = "all",
    stratify: str | None = None,
    batch_size: int = 128,
    **options: Any,
) -> Scrubber:
    """Concept scrubbing: fit an eraser at every site in causal order, each on activations already erased upstream.

    Returns a :class:`Scrubber`; ``with scrubber.hook(model): ...`` applies them all.
    """
    m = _method(method, options)
    lab = labelled(data, model=model, n=n, seed=seed, positions=positions)
    done: list[tuple[str, Eraser]] = []
    order = causal_order(model, sites)
    for s in order:
        X, z = labelled_activations(model, lab, s, upstream=done, batch_size=batch_size)
        done.append((s.name, _stamp(_fit_rows(m, X, z, lab, stratify), model, s, lab, stratify)))
    return Scrubber(tuple(done), tuple(s.alias for s in order))
