"""Labelled activations of a model: resolve the labelled data, then read the activations at a site.

Labelled data is a task with labels (``"gender"``, rendered through the model's tokenizer), a
:class:`~mechwork.tasks.PromptBatch` (``tasks.from_texts(model, texts, labels)``), a pair ``(texts, labels)``, or
a pair ``(tokens, labels)`` with one label per sequence ``[batch]`` or per token ``[batch, pos]``. ``positions``
says which token rows of each prompt carry its label: ``"all"`` (every real token up to the prediction position,
BOS/CLS included), ``"content"`` (the same without the first token), ``"last"`` (the prediction position) or a
boolean mask ``[batch, pos]``. Padding never carries a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.errors import ConfigError, DataError, ShapeError
from ..core.hooks import capture, check_tokens, model_device
from ..core.sites import Site, resolve
from .eraser import Eraser, ErasureHook

POSITIONS = ("all", "content", "last")


@dataclass(frozen=True)
class Labelled:
    """Token prompts with a label per prompt or per token, which token rows to use, and the padding mask."""

    tokens: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    task: str | None
    positions: str
    attention_mask: Int[Tensor, "batch pos"] | None = None
    batch: Any = None


def labelled(
    data: Any,
    *,
    model: Any = None,
    n: int = 2000,
    seed: int = 0,
    split: str = "train",
    positions: Any = "all",
) -> Labelled:
    """Resolve ``data`` into tokens, labels and a row mask (module docstring).

    ``model`` renders a task through the model's tokenizer and tokenises texts; without it a task uses the
    shipped models' vocabulary.
    """
    from ..tasks import PromptBatch, Task, from_texts, get

    pos_name = positions if isinstance(positions, str) else "mask"
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {POSITIONS} or a boolean mask [batch, pos], got {positions!r}")
    if isinstance(data, (str, Task)):
        task = get(data) if isinstance(data, str) else data
        data = task.prompts(n, seed=seed, split=split, model=model)
    if isinstance(data, (tuple, list)) and len(data) == 2 and _texts(data[0]):
        if model is None:
            raise DataError("labelled texts need the model (to tokenise them); pass model=")
        data = from_texts(model, list(data[0]), labels=data[1])
    am = None
    batch = None
    if isinstance(data, PromptBatch):
        if data.labels is None:
            raise DataError(
                f"task {data.task!r} has no labels; erasure needs a labelled task such as 'gender' or "
                "mechwork.tasks.from_texts(model, texts, labels=...)"
            )
        if model is not None:
            from ..core.prompts import check_batch_vocab

            check_batch_vocab(model, data)
        tokens, last, task_name, per_prompt = data.clean, data.pos, data.task, data.labels
        am, batch = data.attention_mask, data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        tokens, per_prompt = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [batch, pos], got {tuple(tokens.shape)}")
        last = torch.full((tokens.shape[0],), tokens.shape[1] - 1)
        task_name = None
    else:
        raise DataError(
            "data must be a task name, a Task, a PromptBatch (tasks.from_texts), (texts, labels) or (tokens, labels); "
            f"got {type(data).__name__}"
        )
    if per_prompt.dtype.is_floating_point:
        raise DataError(f"labels must be integer classes, got dtype {per_prompt.dtype}")
    b, p = tokens.shape
    if per_prompt.shape == (b,):
        labels = per_prompt[:, None].expand(b, p)
    elif per_prompt.shape == (b, p):
        labels = per_prompt
    else:
        raise ShapeError(f"labels must have shape [batch]={b} or [batch, pos]={(b, p)}, got {tuple(per_prompt.shape)}")
    ar = torch.arange(p)[None, :]
    if isinstance(positions, Tensor):
        if positions.shape != (b, p) or positions.dtype != torch.bool:
            raise ShapeError(
                f"a positions mask must be bool [batch, pos]={(b, p)}, got {positions.dtype} {tuple(positions.shape)}"
            )
        mask = positions
    elif positions == "last":
        mask = ar == last[:, None]
    else:
        mask = ar <= last[:, None]
        if positions == "content":
            mask = mask & (ar > 0)
    if am is not None:
        mask = mask & am.bool().to(mask.device)  # padding carries no label
    return Labelled(tokens.long(), labels.long(), mask, task_name, pos_name, am, batch)


def _texts(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x)


def labelled_activations(
    model: Any,
    data: Labelled,
    site: str | Site,
    *,
    upstream: Sequence[tuple[str, Eraser]] = (),
    batch_size: int = 128,
) -> tuple[Float[Tensor, "rows d"], Int[Tensor, " rows"]]:
    """Activations at ``site`` of the rows ``data.mask`` selects (flattened per token) and their labels.

    ``upstream`` erasers are hooked in during the pass (an eraser at ``site`` itself is applied before the
    activations are read). Padded prompts run with their attention mask.
    """
    s = resolve(model, site)[0]
    if s.d is None:
        raise ShapeError(f"site {s.name} has per-token shape {s.shape}; erasure needs fixed-width activations")
    tokens = check_tokens(model, data.tokens)
    dev = model_device(model)
    hooks = ErasureHook(model, upstream).fwd_hooks if upstream else []
    xs, zs = [], []
    for lo in range(0, tokens.shape[0], batch_size):
        am = None if data.attention_mask is None else data.attention_mask[lo : lo + batch_size].to(dev)
        x = capture(model, tokens[lo : lo + batch_size].to(dev), [s], attention_mask=am, hooks=hooks, clone=False)[
            s.name
        ]
        x = x.reshape(*x.shape[:2], -1)  # [batch, pos, d] (head axes flattened)
        m = data.mask[lo : lo + batch_size].to(x.device)
        xs.append(x[m].float().cpu())
        zs.append(data.labels[lo : lo + batch_size][m.cpu()])
    X, z = torch.cat(xs), torch.cat(zs)
    if X.shape[0] == 0:
        raise DataError("the positions selected no token rows")
    return X, z


def stratified_concept(labels: Int[Tensor, " rows"], groups: Int[Tensor, " rows"]) -> Float[Tensor, "rows k"]:
    """Concept columns whose zero covariance with ``r(X)`` means no class signal *within* any group:
    ``1[g = j] (onehot(z) - E[onehot(z) | g = j])`` for every group ``j`` (one column per group when binary)."""
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise DataError(f"z has a single class ({classes.tolist()}); erasing a concept needs at least two classes")
    onehot = (labels[:, None] == classes[None, :]).double()
    if classes.numel() == 2:
        onehot = onehot[:, 1:]
    cols = []
    for j in torch.unique(groups):
        sel = groups == j
        col = torch.zeros_like(onehot)
        col[sel] = onehot[sel] - onehot[sel].mean(0)
        cols.append(col)
    return torch.cat(cols, 1)
