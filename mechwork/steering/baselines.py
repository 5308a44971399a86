"""Baselines behind the same interface: difference of means (CAA/ActAdd), ITI, Linear-AcT (METHODS 7.6, 7.8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.config import Config, check_choices
from ..core.errors import ConfigError
from .base import ADDITIVE_RANGE, AFFINE_RANGE, Method, layer_sites
from .data import Prompts, pooled
from .positions import PositionState
from .steerer import site_hook


def _check_read(read: str) -> None:
    if read not in ("mean", "last"):
        raise ConfigError(f"read must be 'mean' (pooled over tokens) or 'last' (last token), got {read!r}")


@dataclass(frozen=True)
class DiffMeans(Config, Method):
    """Difference of means (CAA / ActAdd style): add ``mean(target) − mean(source)`` at one or several sites.

    Parameters
    ----------
    sites : str or list of str, optional
        Sites or aliases (``"resid_pre.2"``), or a kind meaning every layer (``"resid_post"``). Default: the
        residual stream entering the middle layer.
    read : {"mean", "last"}
        Activations pooled over each prompt's tokens (unpaired sets) or read at its last token (CAA).
    positions : str
        Default positions rule of the steerer (``"all"``; CAA adds after the prompt: ``"generated"``).

    Strength is a multiplier of the vectors, documented range ``[-4, 4]`` (negative steers away).
    """

    sites: Any = None
    read: str = "mean"
    positions: str = "all"

    name = "diffmeans"
    strength_range = ADDITIVE_RANGE

    def _fit(self, model: Any, source: Prompts, target: Prompts, *, progress: bool) -> Any:
        _check_read(self.read)
        names = layer_sites(model, self.sites, f"resid_pre.{int(model.cfg.n_layers) // 2}")
        a, b = pooled(model, source, names, how=self.read), pooled(model, target, names, how=self.read)
        biases = {n: b[n].mean(0) - a[n].mean(0) for n in names}
        return {}, biases, {"vector_norms": {n: float(v.norm()) for n, v in biases.items()}}


@dataclass(frozen=True)
class ITI(Config, Method):
    """Inference-time intervention: a probe per attention head, the top-``k`` heads shifted along their direction.

    Each head's output ``z`` (``blocks.L.attn.hook_z``, before ``W_O``) at the last token (``read="last"``, as
    ITI) is probed with a logistic regression (source 0 vs target 1) on ``1 − val_fraction`` of the prompts and
    scored on the rest; the ``k`` heads with the best validation accuracy get ``α · σ · θ`` added, with ``θ`` the
    normalised mass-mean shift ``mean(target) − mean(source)`` (``direction="probe"``: the probe's weights) and
    ``σ`` the std of the training activations projected on ``θ``. Default ``k``: 10% of the heads (at least 1);
    ``alpha`` 15 as in the paper. Strength multiplies ``α``, range ``[-4, 4]``. For unpaired texts (stories of a
    style) ``read="mean"`` works better: on ``toy-mixed`` with 32 + 32 stories, rate 0.77 at KL 0.03 (strength
    0.25) against 0.63 at KL 0.02 with ``read="last"`` (the last token of every story is ".").
    """

    k: int | None = None
    alpha: float = 15.0
    read: str = "last"
    direction: Literal["mass_mean", "probe"] = "mass_mean"
    val_fraction: float = 0.3
    seed: int = 0

    name = "iti"
    strength_range = ADDITIVE_RANGE

    def _fit(self, model: Any, source: Prompts, target: Prompts, *, progress: bool) -> Any:
        from sklearn.linear_model import LogisticRegression

        _check_read(self.read)
        check_choices(self, "direction")
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        k = self.k if self.k is not None else max(1, round(0.1 * n_layers * n_heads))
        if not 1 <= k <= n_layers * n_heads:
            raise ConfigError(f"k must be between 1 and {n_layers * n_heads} (the model's heads), got {k}")
        names = layer_sites(model, "z", "z")
        a, b = pooled(model, source, names, how=self.read), pooled(model, target, names, how=self.read)
        g = torch.Generator().manual_seed(self.seed)
        tr_a, va_a = _split(len(source), self.val_fraction, g)
        tr_b, va_b = _split(len(target), self.val_fraction, g)
        acc = torch.zeros(n_layers, n_heads)
        dirs: dict[tuple[int, int], Tensor] = {}
        for layer, n in enumerate(names):
            for h in range(n_heads):
                xa, xb = a[n][:, h].double(), b[n][:, h].double()
                X = torch.cat([xa[tr_a], xb[tr_b]]).numpy()
                y = [0] * len(tr_a) + [1] * len(tr_b)
                clf = LogisticRegression(max_iter=1000).fit(X, y)
                Xv = torch.cat([xa[va_a], xb[va_b]]).numpy()
                acc[layer, h] = float(clf.score(Xv, [0] * len(va_a) + [1] * len(va_b)))
                if self.direction == "probe":
                    theta = torch.as_tensor(clf.coef_[0])
                else:
                    theta = xb[tr_b].mean(0) - xa[tr_a].mean(0)
                theta = theta / theta.norm().clamp_min(1e-12)
                sigma = (torch.cat([xa[tr_a], xb[tr_b]]) @ theta).std()
                dirs[(layer, h)] = (self.alpha * sigma * theta).float()
        order = torch.argsort(acc.flatten(), descending=True, stable=True)[:k]
        chosen = sorted((int(i) // n_heads, int(i) % n_heads) for i in order)
        biases: dict[str, Tensor] = {}
        for layer, h in chosen:
            shape = a[names[layer]].shape[1:]
            biases.setdefault(names[layer], torch.zeros(shape))[h] = dirs[(layer, h)]
        return {}, biases, {"head_accuracy": acc.tolist(), "heads": [list(x) for x in chosen], "k": k}


def _split(n: int, val_fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=g)
    n_val = min(n - 2, max(2, int(round(val_fraction * n))))
    return perm[n_val:], perm[:n_val]


def linear_act_map(
    source: Float[Tensor, " n *unit"], target: Float[Tensor, " n *unit"], *, min_std: float = 1e-4
) -> tuple[Float[Tensor, " *unit"], Float[Tensor, " *unit"]]:
    """Linear-AcT's closed form per unit: least squares ``y ≈ ω x + b`` on matched quantiles.

    Both sets (equal sizes) are sorted per unit (1-D optimal transport pairs the i-th smallest source value with
    the i-th smallest target value); ``ω = Σ(x̄ − m_x)(ȳ − m_y) / Σ(x̄ − m_x)²`` and ``b = m_y − ω m_x``. Units
    whose source or target std is below ``min_std`` keep the identity. For Gaussian marginals the map tends to
    the Gaussian OT map ``(σ_y/σ_x)(x − μ_x) + μ_y``.
    """
    if source.shape != target.shape:
        raise ConfigError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must have equal shapes")
    xs, ys = source.double().sort(0).values, target.double().sort(0).values
    mx, my = xs.mean(0), ys.mean(0)
    cx, cy = xs - mx, ys - my
    var = (cx**2).sum(0)
    scale = (cx * cy).sum(0) / var.clamp_min(1e-30)
    bias = my - scale * mx
    flat = (source.double().std(0) < min_std) | (target.double().std(0) < min_std)
    scale = torch.where(flat, torch.ones_like(scale), scale)
    bias = torch.where(flat, torch.zeros_like(bias), bias)
    return scale.float(), bias.float()


@dataclass(frozen=True)
class LinearAcT(Config, Method):
    """Linear-AcT (Rodriguez et al., ICLR 2025): closed-form per-unit affine maps from matched quantiles.

    Fitted site by site in forward order; with ``incremental`` (ml-act's ``incr``, better than ``atonce``)
    the source activations at site ``l`` are recomputed with the maps of the earlier sites applied. Equal set
    sizes are required (sorted one-to-one matching). Quantile gating (transport only inside the source range)
    is not implemented: every value is transported. Strength range ``[0, 1]``.
    """

    sites: Any = None
    incremental: bool = True
    pooling: str = "mean"
    min_std: float = 1e-4

    name = "linear-act"
    equal_sizes = True
    strength_range = AFFINE_RANGE

    def _fit(self, model: Any, source: Prompts, target: Prompts, *, progress: bool) -> Any:
        _check_read(self.pooling)
        names = layer_sites(model, self.sites, "resid_post")
        tgt = pooled(model, target, names, how=self.pooling)
        scales: dict[str, Tensor] = {}
        biases: dict[str, Tensor] = {}
        src = pooled(model, source, names, how=self.pooling)
        state = PositionState()
        for n in names:
            if self.incremental and scales:
                hooks = [(m, site_hook(scales[m], biases[m], 1.0, "all", state)) for m in scales]
                src_n = pooled(model, source, [n], how=self.pooling, fwd_hooks=hooks)[n]
            else:
                src_n = src[n]
            scales[n], biases[n] = linear_act_map(src_n, tgt[n], min_std=self.min_std)
        return scales, biases, {"incremental": self.incremental}
