"""Function-space ground truth for the SAE neural operators (METHODS 3.10's proposed benchmark).

Data: 1-D functions on the periodic interval ``[0, 1)``, ``x(s) = sum_c sum_i a_ci phi_c(s - t_ci) + noise``:
each concept ``phi_c`` is a continuous function (unit L2 norm), each sample activates every concept with
probability ``p_active`` at one random position ``t`` (continuous) with amplitude ``U[0.5, 1.5]``, and the
same sample can be evaluated on any grid (``sample(n_samples, n=...)``). Half the concepts are smooth
(Gaussian bumps, a Gabor wavelet, a Mexican hat; their spectra are negligible beyond ~12 modes), half are not
(boxes, a signed box pair, a ramp, a signed step pair: discontinuities, spectra decaying like 1/k).

Metrics (:func:`dictionary_recovery`, :func:`coherence`, :func:`support_recovery`, :func:`nmse`):
concepts are compared on a common fine grid up to circular shift (a convolutional dictionary is defined up to
where its kernel is centred): the shift-invariant cosine is the maximum over shifts of the circular
cross-correlation of unit-norm concepts; true and learned concepts are matched one to one by the Hungarian
algorithm; recovery is reported as the matched cosines' mean (MCC) and the sine distance
``sqrt(1 - cos^2)`` (max and mean), as in Tolooshams et al.'s earlier dictionary-learning code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, ShapeError

SMOOTH = ("gauss_narrow", "gauss_wide", "gabor", "mexican_hat")
ROUGH = ("box", "box_pair", "ramp", "step_pair")


def _periodic(u: Tensor) -> Tensor:
    """Map offsets to ``[-0.5, 0.5)``."""
    return torch.remainder(u + 0.5, 1.0) - 0.5


def concept(name: str, u: Tensor) -> Tensor:
    """Concept ``name`` evaluated at offsets ``u`` from its centre (periodic, before normalisation)."""
    u = _periodic(u)
    if name == "gauss_narrow":
        return torch.exp(-0.5 * (u / 0.03) ** 2)
    if name == "gauss_wide":
        return torch.exp(-0.5 * (u / 0.06) ** 2)
    if name == "gabor":
        return torch.exp(-0.5 * (u / 0.05) ** 2) * torch.cos(2 * math.pi * 5 * u)
    if name == "mexican_hat":
        v = (u / 0.04) ** 2
        return (1 - v) * torch.exp(-0.5 * v)
    if name == "box":
        return (u.abs() < 0.05).to(u.dtype)
    if name == "box_pair":
        return (u.abs() < 0.03).to(u.dtype) - ((u - 0.08).abs() < 0.03).to(u.dtype)
    if name == "ramp":
        return torch.where(u.abs() < 0.06, (u + 0.06) / 0.12, torch.zeros_like(u))
    if name == "step_pair":
        return torch.where(u.abs() < 0.07, torch.sign(u), torch.zeros_like(u))
    raise ConfigError(f"unknown concept {name!r}; known: {', '.join(SMOOTH + ROUGH)}")


@dataclass
class FunctionDictionary:
    """A seeded generator of sparse sums of shifted concepts, on any grid.

    Parameters
    ----------
    names : tuple of str
        Concepts (default: the four smooth then the four non-smooth ones).
    p_active : float
        Probability that a concept appears in a sample (once, at a uniform position).
    noise : float
        Standard deviation of white noise added per grid point.
    """

    names: tuple[str, ...] = SMOOTH + ROUGH
    p_active: float = 0.3
    noise: float = 0.0
    fine: int = 4096  # grid on which each concept's L2 norm is computed

    def __post_init__(self) -> None:
        if not self.names or not 0 < self.p_active <= 1:
            raise ConfigError("give at least one concept and p_active in (0, 1]")
        s = torch.arange(self.fine, dtype=torch.float64) / self.fine
        self.norms = torch.stack([concept(n, s).pow(2).mean().sqrt() for n in self.names])

    @property
    def n_concepts(self) -> int:
        return len(self.names)

    @property
    def smooth_mask(self) -> Tensor:
        return torch.tensor([n in SMOOTH for n in self.names])

    def concepts(self, n: int) -> Float[Tensor, "k n"]:
        """The true concepts on a grid of ``n`` points, centred at 0, unit L2 norm (as functions)."""
        s = torch.arange(n, dtype=torch.float64) / n
        return torch.stack([concept(c, s) / z for c, z in zip(self.names, self.norms)]).float()

    def codes(self, n_samples: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``(positions [N, K], amplitudes [N, K])``; amplitude 0 = concept absent."""
        gen = torch.Generator().manual_seed(seed)
        pos = torch.rand(n_samples, self.n_concepts, generator=gen, dtype=torch.float64)
        amp = 0.5 + torch.rand(n_samples, self.n_concepts, generator=gen, dtype=torch.float64)
        on = torch.rand(n_samples, self.n_concepts, generator=gen) < self.p_active
        return pos, amp * on

    def render(self, pos: Tensor, amp: Tensor, n: int, *, seed: int = 0) -> Float[Tensor, "N 1 n"]:
        """The functions with these codes sampled on ``n`` points (``[N, 1, n]``)."""
        s = torch.arange(n, dtype=torch.float64) / n
        out = torch.zeros(pos.shape[0], n, dtype=torch.float64)
        for c, (name, z) in enumerate(zip(self.names, self.norms)):
            act = amp[:, c] != 0
            if act.any():
                out[act] += amp[act, c, None] * concept(name, s[None, :] - pos[act, c, None]) / z
        if self.noise:
            gen = torch.Generator().manual_seed(seed + 1)
            out += self.noise * torch.randn(out.shape, generator=gen, dtype=torch.float64)
        return out.float()[:, None, :]

    def sample(self, n_samples: int, n: int, *, seed: int = 0) -> Float[Tensor, "N 1 n"]:
        pos, amp = self.codes(n_samples, seed=seed)
        return self.render(pos, amp, n, seed=seed)


# ------------------------------------------------------------------------------------------------ metrics
def _unit(x: Tensor) -> Tensor:
    x = x.detach().reshape(x.shape[0], -1).double().cpu()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def shift_cosines(a: Float[Tensor, "m n"], b: Float[Tensor, "k n"]) -> tuple[Tensor, Tensor]:
    """``(|cos| [m, k], shift [m, k])``: best absolute cosine of ``a_i`` with any circular shift of ``b_j``."""
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"concepts must share a grid: {a.shape[-1]} vs {b.shape[-1]} points")
    fa, fb = torch.fft.fft(_unit(a)), torch.fft.fft(_unit(b))
    xc = torch.fft.ifft(fa[:, None, :] * fb[None, :, :].conj()).real  # [m, k, n]: <a, roll(b, s)>
    best, shift = xc.abs().max(dim=-1)
    return best, shift


def dictionary_recovery(learned: Float[Tensor, "m n"], true: Float[Tensor, "k n"]) -> dict[str, float]:
    """Hungarian matching of true to learned concepts by shift-invariant |cos|.

    Returns ``mcc`` (mean matched cosine), ``sine_max`` / ``sine_mean`` (sine distances of the matches) and
    ``matched`` (index of the learned concept matched to each true one, as a list).
    """
    from scipy.optimize import linear_sum_assignment

    cos, _ = shift_cosines(true, learned)
    rows, cols = linear_sum_assignment(-cos.numpy())
    c = cos[rows, cols].clamp(max=1.0)
    sine = (1 - c.pow(2)).clamp_min(0).sqrt()
    out = {"mcc": float(c.mean()), "sine_max": float(sine.max()), "sine_mean": float(sine.mean())}
    per = torch.zeros(true.shape[0], dtype=torch.float64)
    per[torch.as_tensor(rows)] = c
    out["per_concept"] = per.tolist()  # type: ignore[assignment]
    out["matched"] = [int(j) for j in cols]  # type: ignore[assignment]
    return out


def coherence(atoms: Float[Tensor, "m n"], *, shift_invariant: bool = False) -> dict[str, float]:
    """``max`` and ``mean_max``: the largest |cos| between distinct atoms, and the mean over atoms of each
    one's largest |cos| with another (optionally up to circular shift, for convolutional dictionaries)."""
    if shift_invariant:
        cos, _ = shift_cosines(atoms, atoms)
    else:
        u = _unit(atoms)
        cos = (u @ u.t()).abs()
    cos.fill_diagonal_(0.0)
    best = cos.max(dim=1).values
    return {"max": float(best.max()), "mean_max": float(best.mean())}


def nmse(x_hat: Tensor, x: Tensor) -> float:
    """``||x - x_hat||^2 / ||x||^2`` over the batch."""
    return float((x_hat - x).pow(2).sum() / x.pow(2).sum().clamp_min(1e-12))


def support_recovery(
    codes: Float[Tensor, "N m n"], pos: Tensor, amp: Tensor, matched: list[int], shifts: Tensor, *, tol: int = 1
) -> dict[str, float]:
    """Precision / recall of the code support of convolutional SAEs.

    A learned channel matched to true concept ``c`` (``matched[c]``) predicts an occurrence of ``c`` at every
    local maximum of its code above 10 % of the channel's largest value; it is correct when a true occurrence
    lies within ``tol`` grid points after undoing the channel's shift against the true concept (``shifts[c]``).
    """
    N, _, n = codes.shape
    tp = n_pred = n_true = 0
    for c, j in enumerate(matched):
        z = codes[:, j]
        peak = (z > 0.1 * z.max().clamp_min(1e-12)) & (z >= z.roll(1, -1)) & (z >= z.roll(-1, -1))
        true_at = torch.round(pos[:, c] * n).long() % n
        has = amp[:, c] != 0
        pred = peak.nonzero()  # (sample, position)
        n_pred += len(pred)
        n_true += int(has.sum())
        if len(pred):
            where = (pred[:, 1] - int(shifts[c])) % n
            d = (where - true_at[pred[:, 0]]).remainder(n)
            d = torch.minimum(d, n - d)
            hit = has[pred[:, 0]] & (d <= tol)
            # each true occurrence counts once
            tp += len(set(pred[hit, 0].tolist()))
    return {"precision": tp / max(n_pred, 1), "recall": tp / max(n_true, 1)}


__all__ = [
    "FunctionDictionary",
    "concept",
    "SMOOTH",
    "ROUGH",
    "shift_cosines",
    "dictionary_recovery",
    "coherence",
    "nmse",
    "support_recovery",
    "evaluate_tensor",
]


@torch.no_grad()
def evaluate_tensor(sae: object, x: Tensor, *, batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction and sparsity of any SAE on activations given as a tensor (``[n, d]`` or
    ``[n, channels, grid]``): ``fvu`` (residual over total variance), ``nmse`` (residual over the energy),
    ``l0`` (active latents per sample; for convolutional SAEs active (channel, point) pairs per grid point),
    ``dead_fraction`` (latents or channels that never fire), ``n``."""
    from .base import SAE

    if not isinstance(sae, SAE):
        raise ConfigError(f"expected a mechwork SAE, got {type(sae).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"expected a non-empty [n, d] or [n, channels, grid] tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        from ..core.errors import NonFiniteError

        raise NonFiniteError("the evaluation tensor contains NaN or inf")
    dev = next(sae.parameters()).device
    err = energy = l0 = 0.0
    fired = None
    mean = x.double().mean(0)
    total = float((x.double() - mean).pow(2).sum())
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(dev)
        f = sae.encode(xb)
        y = sae.decode(f)
        err += float((y.double() - xb.double()).pow(2).sum())
        energy += float(xb.double().pow(2).sum())
        active = f > 0
        if active.ndim == 3:  # [batch, channels, grid]
            l0 += float(active.float().sum(1).mean(-1).sum())
            on = active.any(2).any(0)
        else:
            l0 += float(active.float().sum(-1).sum())
            on = active.any(0)
        fired = on if fired is None else fired | on
    n = x.shape[0]
    assert fired is not None
    return {
        "fvu": err / max(total, 1e-12),
        "nmse": err / max(energy, 1e-12),
        "l0": l0 / n,
        "dead_fraction": float((~fired).float().mean()),
        "n": n,
    }
