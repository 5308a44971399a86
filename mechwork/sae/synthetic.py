"""Synthetic activations with a known dictionary, and how well an SAE recovers it.

``x = sum_i c_i d_i`` with unit feature directions ``d_i`` and sparse non-negative coefficients ``c_i``
(a fixed number of active features per sample, drawn with frequencies that may decay with the feature's rank,
magnitudes uniform in ``[low, 1]``). Recovery is scored as in SAELens's synthetic evaluation and the MFR code
(METHODS 3.6, 3.9): the mean over true features of the best cosine with any decoder row (mean max cosine
similarity, MMCS), and the mean cosine after a one-to-one Hungarian matching (MCC).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, ShapeError


@dataclass
class SyntheticDictionary:
    """A seeded generator of sparse non-negative combinations of unit directions.

    Parameters
    ----------
    d : int
        Dimension of the samples.
    n_features : int
        Number of true features (may exceed ``d``: superposition).
    n_active : int
        Features active in every sample.
    decay : float
        Feature ``i`` is drawn with probability proportional to ``decay ** i`` (1.0: uniform).
    low : float
        Coefficients are uniform in ``[low, 1]``.
    seed : int
        Seed of the directions; :meth:`sample` takes its own seed.
    """

    d: int = 64
    n_features: int = 128
    n_active: int = 4
    decay: float = 1.0
    low: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_active <= self.n_features:
            raise ConfigError(f"n_active must be between 1 and n_features={self.n_features}, got {self.n_active}")
        if not 0.0 < self.decay <= 1.0 or not 0.0 <= self.low < 1.0:
            raise ConfigError("decay must be in (0, 1] and low in [0, 1)")
        gen = torch.Generator().manual_seed(self.seed)
        f = torch.randn(self.n_features, self.d, generator=gen)
        self.features: Float[Tensor, "n_features d"] = f / f.norm(dim=1, keepdim=True)
        self.probs = torch.tensor([self.decay**i for i in range(self.n_features)], dtype=torch.float64)

    def sample(self, n: int, *, seed: int = 1) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n n_features"]]:
        """``n`` samples and their true coefficients."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self.probs.expand(n, -1), self.n_active, replacement=False, generator=gen)
        vals = self.low + (1.0 - self.low) * torch.rand(n, self.n_active, generator=gen)
        coeffs = torch.zeros(n, self.n_features).scatter_(1, idx, vals)
        return coeffs @ self.features, coeffs

    def batches(self, batch_size: int, *, seed: int = 1):
        """An endless iterator of ``[batch_size, d]`` samples (for training on the fly)."""
        i = 0
        while True:
            yield self.sample(batch_size, seed=seed * 1_000_003 + i)[0]
            i += 1


def recovery(learned: Float[Tensor, "m d"], true: Float[Tensor, "n d"]) -> dict[str, float]:
    """How well the rows of ``learned`` (e.g. ``sae.W_dec``) recover the rows of ``true``.

    Returns
    -------
    dict
        ``mmcs``: mean over true features of the max cosine with any learned row; ``mcc``: mean cosine
        after Hungarian matching (one learned row per true feature); ``recovered_0.9``: fraction of true
        features with a learned row at cosine >= 0.9.
    """
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise ShapeError(f"learned {tuple(learned.shape)} and true {tuple(true.shape)} must be [n, d] with the same d")
    a = learned.detach().double().cpu()
    b = true.detach().double().cpu()
    cos = (b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)).t()
    best = cos.max(dim=1).values
    out = {"mmcs": float(best.mean()), "recovered_0.9": float((best >= 0.9).double().mean())}
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return out
    rows, cols = linear_sum_assignment(-cos.numpy())
    out["mcc"] = float(cos[rows, cols].mean())
    return out
