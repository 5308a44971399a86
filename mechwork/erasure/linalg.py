"""The linear algebra the erasers share: bases, rowspace projections, whitening, shrinkage, the Fantope.

All functions are pure and device-agnostic (they run where their inputs live).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def orthonormal_basis(M: Float[Tensor, "d m"], *, rtol: float = 1e-7) -> Float[Tensor, "d r"]:
    """An orthonormal basis of the column space of ``M`` (singular values under ``rtol * max`` dropped)."""
    if M.numel() == 0:
        return M.new_zeros(M.shape[0], 0)
    U, s, _ = torch.linalg.svd(M, full_matrices=False)
    keep = s > rtol * s.max().clamp_min(torch.finfo(s.dtype).tiny)
    return U[:, keep]


def rowspace_projection(W: Float[Tensor, "m d"], *, rtol: float = 1e-7) -> Float[Tensor, "d d"]:
    """``P_R(W)``: the orthogonal projection onto the row space of ``W``."""
    B = orthonormal_basis(W.T, rtol=rtol)
    return B @ B.T


def psd_range_basis(S: Float[Tensor, "d d"], *, rtol: float = 1e-7) -> Float[Tensor, "d r"]:
    """Orthonormal eigenvectors spanning the range of a symmetric PSD matrix (``P_R(S) = B Bᵀ``)."""
    L, V = torch.linalg.eigh((S + S.T) / 2)
    keep = L > rtol * L.abs().max().clamp_min(torch.finfo(L.dtype).tiny)
    return V[:, keep]


def linear_shrinkage(S: Float[Tensor, "d d"], n: int) -> Float[Tensor, "d d"]:
    """Optimal linear shrinkage of a sample covariance toward a scaled identity.

    ``Σ̂ = α S + (1 - α) (tr S / d) I`` with ``α = 1 - (tr S)² / (n (‖S‖²_F - (tr S)² / d))`` (the distribution-free
    estimator of Bodnar, Gupta and Parolya, arXiv 1308.2608, optimal in Frobenius norm as ``d, n → ∞``), clipped
    to ``[0, 1]``. ``S`` is the covariance normalised by ``n``.
    """
    d = S.shape[-1]
    tr = torch.diagonal(S).sum()
    spread = (S * S).sum() - tr * tr / d  # ‖S - (tr S / d) I‖²_F: how far S is from isotropic
    if float(spread) <= 0.0:
        return S.clone()
    alpha = (1 - tr * tr / (n * spread)).clamp(0.0, 1.0)
    eye = torch.eye(d, dtype=S.dtype, device=S.device)
    return alpha * S + (1 - alpha) * (tr / d) * eye


def whitening(sigma: Float[Tensor, "d d"]) -> tuple[Float[Tensor, "d d"], Float[Tensor, "d d"]]:
    """ZCA whitening ``W = (Σ^{1/2})⁺`` and its pseudo-inverse ``W⁺ = Σ^{1/2}``.

    Eigenvalues below ``λ_max · d · eps`` (the ``torch.linalg.pinv`` threshold) count as zero.
    """
    L, V = torch.linalg.eigh((sigma + sigma.T) / 2)
    keep = L > L[-1] * sigma.shape[-1] * torch.finfo(L.dtype).eps
    L = L.clamp_min(0.0)
    inv_sqrt = torch.where(keep, L.rsqrt(), torch.zeros_like(L))
    sqrt = torch.where(keep, L.sqrt(), torch.zeros_like(L))
    return (V * inv_sqrt) @ V.T, (V * sqrt) @ V.T


def fantope_projection(
    A: Float[Tensor, "d d"], k: int, *, iters: int = 60
) -> tuple[Float[Tensor, "d d"], Float[Tensor, " d"], Float[Tensor, "d d"]]:
    """Euclidean projection of a symmetric matrix onto the Fantope ``{0 ≼ A ≼ I, tr A = k}``.

    With ``A = U diag(λ) Uᵀ`` the projection is ``U diag(clip(λ - θ, 0, 1)) Uᵀ`` where ``θ`` solves
    ``Σ clip(λ_i - θ, 0, 1) = k``; ``θ`` is found by bisection, vectorised (no host synchronisation, so it
    runs on a GPU without stalls). Returns the projection, its eigenvalues (ascending) and eigenvectors.
    """
    L, U = torch.linalg.eigh((A + A.T) / 2)
    lo = L[0] - 1.0  # every clip(λ - lo) = 1: sum d >= k
    hi = L[-1]  # every clip(λ - hi) = 0: sum 0 <= k
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = (L - mid).clamp(0.0, 1.0).sum() > k
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    lam = (L - (lo + hi) / 2).clamp(0.0, 1.0)
    return (U * lam) @ U.T, lam, U
