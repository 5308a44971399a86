"""Running statistics of activations, accumulated batch by batch during collection.

Per site: row count, per-feature mean and variance (Chan et al.'s pairwise combination of per-batch
two-pass moments, in float64), per-feature minimum and maximum, and the sum and sum of squares of the row norms.
Statistics are kept per shard and merged in shard order, so a resumed collection ends with exactly the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_FIELDS = ("count", "mean", "m2", "min", "max", "norm_sum", "norm_sq")


@dataclass
class Moments:
    """Accumulated moments of a stream of rows ``[n, d]`` (all tensors float64 except min/max)."""

    count: int
    mean: Tensor
    m2: Tensor
    min: Tensor
    max: Tensor
    norm_sum: Tensor
    norm_sq: Tensor

    @classmethod
    def zeros(cls, d: int, device: torch.device | str = "cpu") -> Moments:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            count=0,
            mean=torch.zeros(d, **f64),
            m2=torch.zeros(d, **f64),
            min=torch.full((d,), math.inf, **f64),
            max=torch.full((d,), -math.inf, **f64),
            norm_sum=torch.zeros((), **f64),
            norm_sq=torch.zeros((), **f64),
        )

    @property
    def n(self) -> int:
        return self.count

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` ``[n, d]`` (any float dtype, any device).

        Two-pass batch moments (sum, then squared deviations from the batch mean) with reductions along the
        row axis, merged into the running float64 totals. ``var_mean``/``aminmax`` over ``dim=0`` would be
        10-20x slower on a CPU, a visible cost next to the forward pass when many sites are collected.
        """
        n = int(x.shape[0])
        if n == 0:
            return
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mean_b = xf.sum(0) / n
        dev = xf - mean_b
        row_sq = (xf * xf).sum(1).double()
        batch = Moments(
            count=n,
            mean=mean_b.double(),
            m2=(dev * dev).sum(0).double(),
            min=xf.amin(0).double(),
            max=xf.amax(0).double(),
            norm_sum=row_sq.sqrt().sum(),
            norm_sq=row_sq.sum(),
        )
        self.merge_(batch)

    def merge_(self, other: Moments) -> None:
        """Merge ``other`` into ``self`` in place (no host-device synchronisation)."""
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        if n_b == 0:
            return
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + other.m2 + delta.square() * (n_a * n_b / n)
        self.min = torch.minimum(self.min, other.min)
        self.max = torch.maximum(self.max, other.max)
        self.norm_sum = self.norm_sum + other.norm_sum
        self.norm_sq = self.norm_sq + other.norm_sq
        self.count = n

    def to(self, device: torch.device | str) -> Moments:
        return Moments(count=self.count, **{f: getattr(self, f).to(device) for f in _FIELDS[1:]})

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}/{f}": getattr(self, f).detach().cpu().contiguous() for f in _FIELDS[1:]}
        out[f"{prefix}/count"] = torch.tensor(float(self.count), dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> Moments:
        count = int(tensors[f"{prefix}/count"].item())
        return cls(count=count, **{f: tensors[f"{prefix}/{f}"] for f in _FIELDS[1:]})

    def finite_within(self, limit: float) -> bool:
        """Whether every value seen is finite and within ``[-limit, limit]`` (the storage dtype's range)."""
        return bool(
            torch.isfinite(self.min).all()
            and torch.isfinite(self.max).all()
            and self.max.max() <= limit
            and self.min.min() >= -limit
        )

    def summary(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Statistics as a user sees them: tensors shaped like one token's activation, floats for norms."""
        n = max(self.n, 1)
        var = (self.m2 / n).clamp_min(0)
        mean_norm = float(self.norm_sum) / n
        rms = math.sqrt(max(float(self.norm_sq) / n, 0.0))
        d = max(math.prod(shape), 1)
        return {
            "count": self.n,
            "mean": self.mean.float().reshape(shape),
            "var": var.float().reshape(shape),
            "std": var.sqrt().float().reshape(shape),
            "min": self.min.float().reshape(shape),
            "max": self.max.float().reshape(shape),
            "mean_norm": mean_norm,
            "rms_norm": rms,
            "norm_std": math.sqrt(max(rms * rms - mean_norm * mean_norm, 0.0)),
            # SAELens's "expected average only in" normalisation: scale rows to mean norm sqrt(d)
            "norm_scaling_factor": math.sqrt(d) / mean_norm if mean_norm > 0 else float("nan"),
        }


def scalar_summary(stats: dict[str, Any]) -> dict[str, float]:
    """The JSON-friendly part of :meth:`Moments.summary` (for the manifest)."""
    out = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    out["mean_abs_mean"] = float(stats["mean"].abs().mean())
    out["max_abs"] = float(torch.maximum(stats["max"].abs(), stats["min"].abs()).max())
    return out
