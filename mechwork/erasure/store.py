"""Fitting from an :class:`~mechwork.cache.ActivationStore`: LEACE streams the rows batch by batch (the store is
never loaded whole); INLP and R-LACE are in-memory algorithms and read the selected rows."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ..core.errors import ConfigError, DataError, ShapeError
from ._method import Method
from .eraser import Eraser
from .leace import LEACE


def row_labels(
    store: Any, *, labels: Tensor | None = None, doc_labels: Tensor | None = None
) -> Int[Tensor, " n_tokens"]:
    """One label per store row: ``labels`` as given (``[n_tokens]``), or ``doc_labels[store.docs]`` (one label per
    source document, e.g. per task prompt). Rows labelled ``-1`` (and inserted BOS rows) are skipped by the fit."""
    if (labels is None) == (doc_labels is None):
        raise ConfigError("give exactly one of labels (one per row) or doc_labels (one per source document)")
    if labels is not None:
        lab = torch.as_tensor(labels).long().reshape(-1)
        if lab.numel() != store.n_tokens:
            raise ShapeError(f"labels has {lab.numel()} entries but the store has {store.n_tokens} rows")
        return lab
    dl = torch.as_tensor(doc_labels).long().reshape(-1)
    docs = store.docs.long()
    if int(docs.max()) >= dl.numel():
        raise ShapeError(f"the store's rows come from {int(docs.max()) + 1} documents but doc_labels has {dl.numel()}")
    return torch.where(docs >= 0, dl[docs.clamp_min(0)], torch.full_like(docs, -1))


def fit_store(
    store: Any,
    site: str,
    method: str | Method = "leace",
    *,
    labels: Tensor | None = None,
    doc_labels: Tensor | None = None,
    rows: Any = None,
    batch_size: int = 8192,
    **options: Any,
) -> Eraser:
    """Fit an eraser at ``site`` from a store's rows and their labels.

    Parameters
    ----------
    store : ActivationStore
    site : str
        A site of the store.
    method : {"leace", "inlp", "rlace"} or a configured method
        LEACE accumulates its statistics over ``batch_size``-row batches: memory ``O(d²)``, whatever the store size.
    labels, doc_labels : Tensor
        See :func:`row_labels`; negative labels mark rows to skip.
    rows : optional
        Restrict to these rows (slice, index tensor or boolean mask), e.g. a training split.
    """
    from .methods import method as _method

    m = _method(method, options)
    lab = row_labels(store, labels=labels, doc_labels=doc_labels)
    d = store.d(site)
    if isinstance(m, LEACE):
        keep = lab >= 0
        classes = torch.unique(lab[keep])
        if classes.numel() < 2:
            raise DataError(f"the labelled rows hold {classes.numel()} class(es); erasure needs at least two")
        if int(classes.min()) != 0 or int(classes.max()) != classes.numel() - 1:
            raise DataError(f"labels must be 0..k-1 for streaming, found classes {classes.tolist()}")
        fitter = m.fitter(d, n_classes=classes.numel())
        for idx, x in store.batches(site, batch_size, shuffle=False, rows=rows, flatten=True, with_indices=True):
            z = lab[idx]
            ok = z >= 0
            if bool(ok.any()):
                fitter.update(x[ok], z[ok])
        eraser = fitter.eraser
    else:
        sel = torch.arange(store.n_tokens)
        if rows is not None:
            sel = sel[rows]
        sel = sel[lab[sel] >= 0]
        X = store[site][sel].reshape(len(sel), -1).float()
        eraser = m.fit_eraser(X, lab[sel])
    cfg = dataclasses.replace(eraser.config, model=store.model_spec, site=store.site_name(site))
    return dataclasses.replace(eraser, config=cfg)
