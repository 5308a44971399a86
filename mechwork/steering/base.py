"""The one interface of every steering method: ``Method(...).fit(model, source, target) -> Steerer``."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, NonFiniteError
from ..core.kind import require_logits
from ..core.sites import resolve
from .data import Prompts, check_sets, encode
from .steerer import Steerer, SteererConfig, model_spec

AFFINE_RANGE = (0.0, 1.0)
ADDITIVE_RANGE = (-4.0, 4.0)


def layer_sites(model: Any, sites: str | Sequence[str] | None, default: str) -> list[str]:
    """Full hook names: a list of sites/aliases, or a kind (``"resid_post"``, ``"z"``) meaning every layer."""
    spec = default if sites is None else sites
    if isinstance(spec, str) and "." not in spec:
        spec = [f"{spec}.{layer}" for layer in range(int(model.cfg.n_layers))]
    elif isinstance(spec, str):
        spec = [spec]
    names = [s.name for s in resolve(model, list(spec))]
    if not names:
        raise ConfigError("no sites to steer")
    for s in resolve(model, names):
        if s.d is None:
            raise ConfigError(f"site {s.name} has per-token shape {s.shape}; steering needs fixed-width activations")
    return names


class Method:
    """Base of the steering methods; subclasses are frozen config dataclasses with a ``_fit``.

    ``fit`` takes the model and two prompt sets (texts, a token tensor ``[n, pos]`` or a task's
    ``PromptBatch``): ``source`` = what activations look like now, ``target`` = what they should look like.
    """

    name: str = "method"
    equal_sizes: bool = False
    needs_logits: bool = False
    strength_range: tuple[float, float] = AFFINE_RANGE
    default_positions: str = "all"

    def fit(
        self,
        model: Any,
        source: Any,
        target: Any,
        *,
        concept: str | None = None,
        to: str | None = None,
        progress: bool = False,
    ) -> Steerer:
        """Fit on ``source`` -> ``target`` prompt sets and return the frozen :class:`Steerer`.

        Raises
        ------
        DataError
            Fewer than 4 prompts in a set, unequal sizes where the method needs equal ones, prompts longer than
            the model's context.
        NonFiniteError
            The training loss became NaN or inf (the message names the step).
        MechworkError
            A method that needs next-token logits (LoFiT) on an encoder without a language-model head.
        """
        if self.needs_logits:
            require_logits(model, self.name)
        src, tgt = encode(model, source, what="source"), encode(model, target, what="target")
        check_sets(src, tgt, equal=self.equal_sizes, method=self.name)
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            scales, biases, card = self._fit(model, src, tgt, progress=progress)
        finally:
            model.train(was_training)
        sites = sorted(set(scales) | set(biases), key=_site_order(model))
        from ..core.sites import site as one_site

        shapes = tuple(tuple(int(x) for x in (one_site(model, s).shape or ())) for s in sites)
        cfg = SteererConfig(
            method=self.name,
            sites=tuple(sites),
            shapes=shapes,
            d_model=int(model.cfg.d_model),
            model=model_spec(model),
            positions=getattr(self, "positions", self.default_positions),
            strength=1.0,
            strength_range=self.strength_range,
            options=self.to_dict(),  # type: ignore[attr-defined]
            concept=concept,
            target=to,
            n_source=len(src),
            n_target=len(tgt),
            fit_seconds=round(time.perf_counter() - t0, 3),
        )
        return Steerer(
            {k: v.detach().cpu() for k, v in scales.items()},
            {k: v.detach().cpu() for k, v in biases.items()},
            cfg,
            card,
        )

    def _fit(
        self, model: Any, source: Prompts, target: Prompts, *, progress: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
        raise NotImplementedError


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Model parameters without gradients while steering parameters train (restored on exit)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def check_loss(loss: Tensor, method: str, step: int) -> None:
    """Stop with the step number when the loss is NaN or inf."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteError(
            f"{method}: the loss is {float(loss.detach())} at step {step}; lower the learning rate or check the prompts "
            "(fitting stopped, nothing was returned)"
        )


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine decay from ``base`` to 0 over ``steps``."""
    return 0.5 * base * (1 + math.cos(math.pi * step / max(steps, 1)))


def _site_order(model: Any) -> Any:
    from ..core.sites import sites as all_sites

    order = {s.name: i for i, s in enumerate(all_sites(model))}
    return lambda name: order.get(name, 10**6)
