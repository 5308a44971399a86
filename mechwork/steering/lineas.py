"""LinEAS: end-to-end learning of per-unit affine maps with a distributional loss (METHODS 7.1-7.4).

Rodriguez et al., "LinEAS: End-to-end Learning of Activation Steering with a Distributional Loss",
NeurIPS 2025 (arXiv 2503.10679). Written from the paper's description; no code copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.hooks import capture
from ..core.prompts import prepends_bos
from ..core.sites import resolve
from .base import AFFINE_RANGE, Method, check_loss, cosine_lr, frozen, layer_sites
from .data import Prompts, pool, pooled


def sorted_w2(z: Tensor, v_sorted: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """Σ over units of the 1-D squared Wasserstein distance between the columns of ``z`` and of ``v``.

    ``z`` ``[n, d]``; ``v_sorted`` ``[n, d]`` already sorted along axis 0 (equal sample counts):
    ``(weight * ((sort(z, 0) − sort(v, 0))² ).mean(0)).sum()`` (``weight`` per unit, default 1).
    """
    return (weight * ((z.sort(0).values - v_sorted) ** 2).mean(0)).sum()


def prox_sparse_group(u: Tensor, step: float, l1: float, group: float) -> Tensor:
    """Proximal operator of ``step·(l1‖u‖₁ + group·√d‖u‖₂)``: soft-threshold, then block soft-threshold."""
    if l1 > 0:
        u = u.sign() * (u.abs() - step * l1).clamp_min(0)
    if group > 0:
        norm = u.norm()
        thresh = step * group * math.sqrt(u.numel())
        u = u * (1 - thresh / norm).clamp_min(0) if float(norm) > 0 else u
    return u


def _affine_hook(u: Tensor, b: Tensor) -> Any:
    def fn(act: Tensor, hook: Any = None) -> Tensor:
        return act * (1 + u) + b

    return fn


@dataclass(frozen=True)
class LinEAS(Config, Method):
    """LinEAS: an affine map ``ω ⊙ z + b`` per unit at every chosen site, trained end to end.

    The source prompts run **through** the maps every step (upstream maps change downstream inputs); at each
    site the pooled (mean over tokens) intervened activations are matched to the target's pooled activations
    (computed once, without intervention) by the per-unit sorted 1-D Wasserstein loss, summed over sites.
    A sparse group lasso ``l1 Σ(‖ω−1‖₁+‖b‖₁) + group Σ √d (‖ω−1‖₂+‖b‖₂)`` is applied by proximal steps after
    each SGD step: ``l1`` selects units, ``group`` switches whole sites (layers) off.

    Parameters
    ----------
    sites : str or list of str, optional
        Default ``"resid_post"``: the residual stream after every layer (or e.g. ``"ln2_normalized"``).
    steps : int
        SGD steps (full batch, cosine decay); the paper uses 1000, 100 already reach its behaviour on ``toy-mixed``.
    lr : float
        Learning rate (paper: 0.1 on LayerNorm outputs). The gradients of the scales are divided by
        ``max(E[z_j²], 1)`` (diagonal preconditioning) and all gradients clipped to norm ``clip``: plain SGD at
        lr 0.1 on the residual stream of ``toy-mixed`` diverges within 3 steps.
    l1 : float
        Sparse-lasso weight on units, ``Σ(‖ω−1‖₁ + ‖b‖₁)`` (0: none); selects units within a site.
    group : float
        Group-lasso weight on sites, ``Σ √d (‖ω−1‖₂ + ‖b‖₂)`` (0: none); switches whole sites (layers) off.
    clip : float or None
        Gradient-norm clipping (``None``: the paper's plain SGD).
    pooling : {"mean", "last"}

    Strength ``λ ∈ [0, 1]`` interpolates ``(1 + λ(ω−1)) z + λ b``; ``steerer.inverse()`` gives ``(z − b)/ω``.
    """

    sites: Any = None
    steps: int = 1000
    lr: float = 0.1
    l1: float = 0.0
    group: float = 0.0
    pooling: str = "mean"
    clip: float | None = 1.0
    seed: int = 0

    name = "lineas"
    equal_sizes = True
    strength_range = AFFINE_RANGE

    def _fit(self, model: Any, source: Prompts, target: Prompts, *, progress: bool) -> Any:
        from tqdm.auto import tqdm

        if self.steps < 1 or (self.lr is not None and self.lr <= 0) or self.l1 < 0 or self.group < 0:
            raise ConfigError(f"LinEAS needs steps >= 1, lr > 0, l1 >= 0, group >= 0; got {self}")
        names = layer_sites(model, self.sites, "resid_post")
        dev = next(model.parameters()).device
        shapes = {s.name: tuple(s.shape or ()) for s in resolve(model, names)}
        tgt = {n: v.flatten(1).sort(0).values for n, v in pooled(model, target, names, how=self.pooling).items()}
        # diagonal preconditioning of the scale parameters: the loss's curvature in ω_j is 2·E[z_j²], so units
        # with large activations (the residual stream: values of tens) get steps divided by max(E[z_j²], 1);
        # LayerNorm outputs (E[z²] < 1, the paper's sites) keep plain SGD
        sq = {n: v.flatten(1).pow(2).mean(0) for n, v in pooled(model, source, names, how=self.pooling).items()}
        precond = {n: sq[n].clamp_min(1.0).reshape(shapes[n]).to(dev) for n in names}
        base_lr = self.lr
        u = {n: torch.zeros(shapes[n], device=dev, requires_grad=True) for n in names}
        b = {n: torch.zeros(shapes[n], device=dev, requires_grad=True) for n in names}
        tgt = {n: v.to(dev) for n, v in tgt.items()}
        toks, mask = source.tokens.to(dev), source.mask
        am, skip = mask.long().to(dev), prepends_bos(model)
        opt = torch.optim.SGD([*u.values(), *b.values()], lr=base_lr)
        history: list[dict[str, float]] = []
        bar = tqdm(range(self.steps), desc="LinEAS", disable=not progress)
        with frozen(model):
            for step in bar:
                lr = cosine_lr(base_lr, step, self.steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                maps = [(n, _affine_hook(u[n], b[n])) for n in names]
                acts = capture(model, toks, names, attention_mask=am, hooks=maps, grad=True, clone=False)
                store = {n: pool(acts[n], mask, skip_first=skip).flatten(1) for n in names}
                losses = {n: sorted_w2(store[n], tgt[n]) for n in names}
                loss = torch.stack(list(losses.values())).sum()
                check_loss(loss, "LinEAS", step)
                opt.zero_grad()
                loss.backward()
                for n in names:
                    grad = u[n].grad
                    if grad is not None:
                        grad.div_(precond[n])
                if self.clip:
                    torch.nn.utils.clip_grad_norm_([*u.values(), *b.values()], self.clip)
                opt.step()
                with torch.no_grad():
                    for p in (*u.values(), *b.values()):
                        p.copy_(prox_sparse_group(p, lr, self.l1, self.group))
                if step % max(1, self.steps // 50) == 0 or step == self.steps - 1:
                    history.append(
                        {
                            "step": step,
                            "loss": float(loss.detach()),
                            **{f"loss.{n}": float(v.detach()) for n, v in losses.items()},
                        }
                    )
                    bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        scales = {n: (1 + u[n]).detach() for n in names}
        biases = {n: b[n].detach() for n in names}
        return scales, biases, {"history": history, "final_loss": history[-1]["loss"], "lr": base_lr}
