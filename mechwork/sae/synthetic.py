"""Synthetic activations with a known dictionary, and how well an SAE recovers it.

``x = sum_i c_i d_i`` with unit feature directions ``d_i`` and sparse non-negative coefficients ``c_i``
(a fixed number of active features per sample, drawn with frequencies that may decay with the feature's rank,
magnitudes uniform in ``[low, 1]``). Recovery is scored as in SAELens's synthetic evaluation and the MFR code
(METHODS 3.6, 3.9): the mean over true features of the best cosine with any decoder row (mean max cosine
similarity, MMCS), and the mean cosine after a one-to-one Hungarian matching (MCC).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, ShapeError


class _Stream:
    def batches(self, batch_size: int, *, seed: int = 1):
        """An endless iterator of ``[batch_size, d]`` samples (for training on the fly)."""
        i = 0
        while True:
            yield self.sample(batch_size, seed=seed * 1_000_003 + i)[0]  # type: ignore[attr-defined]
            i += 1


@dataclass
class SyntheticDictionary(_Stream):
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


@dataclass
class GroupedSynthetic(_Stream):
    """The synthetic data of the MFR paper (after Sharkey et al. 2022), with per-sample sampling.

    ``n_features`` true features ``~ N(0, 1)`` in ``d`` dimensions (not normalised, as in the authors' code) are
    split into ``n_groups`` contiguous groups (sizes differ by at most one: 512 / 12 gives 43 or 42). Each
    sample picks one group uniformly, then ``n_active`` distinct features of that group with probability
    proportional to ``decay ** rank`` (rank within the group), with coefficients ``U[0, 1]``;
    ``x = coefficients @ features``.

    The authors' generator (``utils/data_utils.py``) draws the ``n_active`` indices once per group per chunk
    of a million samples, so every sample of a group within a chunk shares the same support; here every sample
    draws its own (the fix METHODS 3.9 asks for). Defaults are the paper's: 256-d, 512 features, 12 groups,
    32 active, 0.99 decay.
    """

    d: int = 256
    n_features: int = 512
    n_groups: int = 12
    n_active: int = 32
    decay: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_groups <= self.n_features:
            raise ConfigError(f"n_groups must be between 1 and n_features={self.n_features}, got {self.n_groups}")
        sizes = [self.n_features // self.n_groups + (g < self.n_features % self.n_groups) for g in range(self.n_groups)]
        if self.n_active > min(sizes):
            raise ConfigError(f"n_active={self.n_active} exceeds the smallest group ({min(sizes)} features)")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError("decay must be in (0, 1]")
        gen = torch.Generator().manual_seed(self.seed)
        self.features: Float[Tensor, "n_features d"] = torch.randn(self.n_features, self.d, generator=gen)
        self.starts = torch.tensor([0, *itertools.accumulate(sizes)][:-1])
        self.sizes = torch.tensor(sizes)

    def sample(self, n: int, *, seed: int = 1) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n n_features"]]:
        """``n`` samples and their true coefficients (each sample with its own support)."""
        gen = torch.Generator().manual_seed(seed)
        group = torch.randint(self.n_groups, (n,), generator=gen)
        idx = torch.empty(n, self.n_active, dtype=torch.long)
        for g in range(self.n_groups):
            rows = (group == g).nonzero().flatten()
            if len(rows):
                probs = torch.tensor([self.decay**r for r in range(int(self.sizes[g]))], dtype=torch.float64)
                pick = torch.multinomial(probs.expand(len(rows), -1), self.n_active, replacement=False, generator=gen)
                idx[rows] = pick + self.starts[g]
        vals = torch.rand(n, self.n_active, generator=gen)
        coeffs = torch.zeros(n, self.n_features).scatter_(1, idx, vals)
        return coeffs @ self.features, coeffs


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
