"""Mutual feature regularisation (MFR; Marks, Paren, Krueger, Barez, arXiv 2411.01220).

N TopK SAEs train together on the same batches (the trainer's joint loss) and a penalty pulls their
dictionaries together: ``weight * warmup(t) * mean over pairs (1 - MMCS(W_i, W_j))`` (configured by
:class:`~mechwork.sae.config.MFRPenalty`). The architecture ``mfr`` is a TopK SAE with the paper's **tied**
decoder (decoder rows = the encoder rows, normalised) as an option; every SAE of a run is exported as a plain
SAELens ``topk`` folder, and the run's cards record each SAE's partners and their final MMCS.

Cost of the matching, per pair and step (d_sae = m):

* ``hungarian``: an ``m x m`` cosine matrix (``m^2 d`` flops, ``4 m^2`` bytes: 1 GiB at m = 16k) plus
  scipy's ``linear_sum_assignment`` on the CPU, cubic in m (measured in ``benchmarks/sae_family_bench.py``;
  at 16k latents it is minutes per pair per step, i.e. impractical every step).
* ``cached``: the same every ``refresh_every`` steps; in between only the matched pairs' cosines (``m d``).
* ``max``: the cosine matrix in row blocks (memory ``block x m``), no assignment, fully on the accelerator.

Example::

    base = ms.SAEConfig(architecture="mfr", d_sae=512, k=32)
    cfg = ms.TrainConfig(saes=mfr_saes(base, 4), mfr=ms.MFRPenalty(weight=3.0), ...)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..core.errors import CheckpointError, ConfigError
from .base import SAE, check_tensors
from .config import MFRPenalty, SAEConfig
from .topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class MFRConfig(TopKConfig):
    """A TopK SAE of an MFR run (all :class:`~mechwork.sae.topk.TopKConfig` fields, plus ``tied``).

    Parameters
    ----------
    tied : bool
        Decoder rows are the encoder rows normalised to unit norm (the authors' model); ``False``: separate
        decoder (as SAELens's TopK).
    """

    architecture: str = "mfr"
    tied: bool = True

    @property
    def sparsity_label(self) -> str:
        return f"k{self.k}" + ("_tied" if self.tied else "")


class MFRSAE(TopKSAE):
    """TopK SAE with an optional tied decoder ``W_dec = dec_scale * normalize(W_enc_T)`` (``dec_scale`` is 1
    until an input scale is folded in)."""

    cfg: MFRConfig
    saelens_name: ClassVar[str | None] = "topk"

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        super().init_parameters(device=device, dtype=dtype)
        if self.cfg.tied:
            del self.W_dec
            self.register_buffer("dec_scale", torch.ones((), dtype=dtype, device=device))

    def __getattr__(self, name: str) -> Any:
        if name == "W_dec" and self.cfg.tied:
            w = self.W_enc_T
            return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8) * self.dec_scale
        return super().__getattr__(name)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if not self.cfg.tied:
            super().remove_parallel_grad()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if not self.cfg.tied:
            super().normalize_decoder()

    @torch.no_grad()
    def fold_scale(self) -> None:
        if not self.cfg.tied or float(self.norm_scale) == 1.0:
            return super().fold_scale()
        s = float(self.norm_scale)
        self.W_enc_T.mul_(s)
        self.dec_scale.div_(s)
        self.b_dec.div_(s)
        self.norm_scale.fill_(1.0)

    @torch.no_grad()
    def import_tensors(self, w: dict[str, Tensor], raw: dict[str, Any], where: Any) -> None:
        if not self.cfg.tied:
            return super().import_tensors(w, raw, where)
        check_tensors(w, self.expected_tensors(), where, self)
        if "norm_scale" in w:
            raise CheckpointError(f"{where}: a tied MFR SAE folder has no unfolded norm_scale")
        self.W_enc_T.copy_(w["W_enc"].t())
        self.b_enc.copy_(w["b_enc"])
        self.b_dec.copy_(w["b_dec"])
        unit = self.W_enc_T / self.W_enc_T.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        scale = float(w["W_dec"].norm(dim=-1).mean())
        if not torch.allclose(w["W_dec"].float(), unit * scale, atol=1e-5, rtol=1e-4):
            raise CheckpointError(f"{where}: W_dec is not the normalised encoder, as a tied MFR SAE's must be")
        self.dec_scale.fill_(scale)


def mfr_saes(
    base: SAEConfig, n: int, *, k_growth: Literal["same", "linear"] = "same", seed_step: int = 1
) -> tuple[MFRConfig, ...]:
    """``n`` SAE configs of one MFR run: seeds ``base.seed + i * seed_step``, names ``mfr<i>_...``.

    ``k_growth="linear"`` gives SAE ``i`` ``k_i = k * (i + 1)`` (the authors' code, commit b76748c);
    ``"same"`` keeps ``k``. A TopK ``base`` becomes an ``mfr`` config (tied unless ``base`` says otherwise).
    """
    if n < 2:
        raise ConfigError(f"an MFR run needs at least 2 SAEs, got n={n}")
    if not isinstance(base, TopKConfig):
        raise ConfigError(f"MFR couples TopK SAEs; the base config is {type(base).__name__}")
    if not isinstance(base, MFRConfig):
        base = base.replace(architecture="mfr")
    out = []
    for i in range(n):
        k = base.k * (i + 1) if k_growth == "linear" else base.k
        if k > base.d_sae:
            raise ConfigError(f"k_growth='linear' gives SAE {i} k={k} > d_sae={base.d_sae}")
        cfg = base.replace(seed=base.seed + i * seed_step, k=k, k_start=None if k_growth == "linear" else base.k_start)
        out.append(cfg.replace(name=f"mfr{i}_{cfg.sparsity_label}_w{cfg.d_sae}_s{cfg.seed}"))
    return tuple(out)


# ------------------------------------------------------------------------------------------ matching
def _unit(w: Tensor) -> Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def hungarian(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"]) -> Int[Tensor, " r"]:
    """The one-to-one assignment of the rows of ``a`` (``m <= n`` rows) to distinct rows of ``b`` that maximises
    the total cosine: ``a[i]`` is matched to ``b[cols[i]]`` (scipy's ``linear_sum_assignment``, on the CPU)."""
    from scipy.optimize import linear_sum_assignment

    if a.shape[0] > b.shape[0]:
        raise ConfigError(f"hungarian(a, b) needs a with no more rows than b, got {a.shape[0]} > {b.shape[0]}")
    cos = (_unit(a.detach().float()) @ _unit(b.detach().float()).t()).cpu().double().numpy()
    _, cols = linear_sum_assignment(-cos)  # rows come back as 0..m-1 in order when m <= n
    return torch.as_tensor(cols, dtype=torch.long, device=a.device)


def matched_mmcs(a: Tensor, b: Tensor, cols: Tensor) -> Tensor:
    """Mean cosine of ``a[i]`` with ``b[cols[i]]`` (differentiable in both)."""
    return (_unit(a) * _unit(b)[cols]).sum(-1).mean()


def max_mmcs(a: Tensor, b: Tensor, *, block: int = 4096) -> Tensor:
    """Symmetric mean-max cosine: mean over rows of each dictionary of the best cosine in the other
    (computed in row blocks; differentiable through the selected maxima)."""
    an, bn = _unit(a), _unit(b)

    def one_way(x: Tensor, y: Tensor) -> Tensor:
        return torch.cat([(x[i : i + block] @ y.t()).max(dim=1).values for i in range(0, x.shape[0], block)]).mean()

    return 0.5 * (one_way(an, bn) + one_way(bn, an))


def warmup(step: int, steps: int) -> float:
    """The authors' cosine ramp from 0 (step 0) to 1 (step ``steps``)."""
    if steps <= 0 or step >= steps:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (steps - step) / steps))


class MutualFeaturePenalty(nn.Module):
    """The joint loss of an MFR run (``train`` builds it from ``TrainConfig.mfr``).

    Called by the trainer as ``penalty(saes, outputs, x)`` after ``begin_step(saes, step, total_steps)``;
    ``state()`` holds the cached assignments (saved in checkpoints, so resuming is exact); ``card(saes, sae)``
    records a trained SAE's partners and its final MMCS with each.
    """

    def __init__(self, cfg: MFRPenalty) -> None:
        super().__init__()
        self.cfg = cfg
        self.step = 0
        self.factor = 0.0
        self._cols: dict[str, Tensor] = {}
        self.last: dict[tuple[int, int], float] = {}

    def _pairs(self, saes: list[SAE]) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(saes)), 2))

    def _oriented(self, saes: list[SAE], i: int, j: int) -> tuple[Tensor, Tensor]:
        a, b = saes[i].W_dec, saes[j].W_dec
        return (a, b) if a.shape[0] <= b.shape[0] else (b, a)

    def check(self, saes: list[SAE]) -> None:
        bad = [s.cfg.label for s in saes if s.activation != "topk"]
        if len(saes) < 2 or bad:
            raise ConfigError(f"MFR needs >= 2 TopK SAEs; got {len(saes)} SAEs, not TopK: {bad}")

    def state(self, saes: list[SAE]) -> dict[str, Tensor]:
        """Checkpointed tensors: the cached assignment of every pair (``cached`` matching)."""
        if self.cfg.matching != "cached":
            return {}
        out = {}
        for i, j in self._pairs(saes):
            key = f"mfr/cols/{i}-{j}"
            if key not in self._cols:
                n = min(saes[i].d_sae, saes[j].d_sae)
                self._cols[key] = torch.full((n,), -1, dtype=torch.long, device=saes[i].W_enc_T.device)
            out[key] = self._cols[key]
        return out

    def begin_step(self, saes: list[SAE], step: int, total_steps: int) -> None:
        self.step = step
        self.factor = self.cfg.weight * warmup(step, self.cfg.warmup_steps)
        if self.cfg.matching == "cached" and step % self.cfg.refresh_every == 0 and self.factor > 0:
            for key, (i, j) in zip(self.state(saes), self._pairs(saes)):
                self._cols[key].copy_(hungarian(*self._oriented(saes, i, j)))

    def mmcs(self, saes: list[SAE], i: int, j: int) -> Tensor:
        a, b = self._oriented(saes, i, j)
        if self.cfg.matching == "max":
            return max_mmcs(a, b)
        if self.cfg.matching == "cached":
            cols = self.state(saes)[f"mfr/cols/{i}-{j}"]
            if int(cols[0]) < 0:  # not assigned yet (penalty still at 0 weight): assign now
                cols.copy_(hungarian(a, b))
        else:
            cols = hungarian(a, b)
        return matched_mmcs(a, b, cols)

    def forward(self, saes: list[SAE], outs: list[Any], x: Tensor) -> Tensor:
        if self.factor == 0.0:
            return x.new_zeros(())
        pairs = self._pairs(saes)
        vals = [self.mmcs(saes, i, j) for i, j in pairs]
        self.last = {p: float(v.detach()) for p, v in zip(pairs, vals)} if self.step % 50 == 0 else self.last
        return self.factor * torch.stack([1.0 - v for v in vals]).mean()

    @torch.no_grad()
    def card(self, saes: list[SAE], sae: SAE) -> dict[str, Any]:
        i = next(n for n, s in enumerate(saes) if s is sae)
        partners = {}
        for j, other in enumerate(saes):
            if j != i:
                a, b = (sae.W_dec, other.W_dec) if sae.d_sae <= other.d_sae else (other.W_dec, sae.W_dec)
                partners[other.cfg.label] = round(float(matched_mmcs(a, b, hungarian(a, b))), 4)
        return {"mfr": {**self.cfg.to_dict(), "partners": partners, "note": "final Hungarian MMCS with each"}}


__all__ = [
    "MFRConfig",
    "MFRSAE",
    "MFRPenalty",
    "MutualFeaturePenalty",
    "mfr_saes",
    "hungarian",
    "matched_mmcs",
    "max_mmcs",
    "warmup",
]
