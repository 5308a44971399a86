"""LEACE: least-squares concept erasure, closed form, from streaming statistics.

Belrose et al., NeurIPS 2023 (arXiv 2306.03819). Among affine erasers with ``Cov(r(X), Z) = 0`` the one
minimising ``E‖r(X) - X‖²_M`` for every PSD inner product ``M`` is

    r(x) = x - W⁺ P_{W Σ_XZ} W (x - μ),   W = (Σ_XX^{1/2})⁺ (ZCA whitening).

:class:`LeaceFitter` accumulates ``μ_X``, ``μ_Z``, ``Σ_XX`` and ``Σ_XZ`` over batches (Chan's pairwise update
in float64, so the result does not depend on how the data was batched); ``.eraser`` solves the closed form.
``method="orth"`` is SAL (Shao et al., EACL 2023): the orthogonal projection out of ``colspace(Σ_XZ)``, no
whitening, same guard, more distortion.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.config import check_choices
from ..core.errors import ConfigError, DataError, ShapeError
from ._data import Concept, ErasureWarning, check_x
from ._method import Method, Solution
from .eraser import Eraser
from .linalg import linear_shrinkage, orthonormal_basis, whitening

_SHRINK_NOTE = (
    "LEACE whitens with Σ_XX; with n <= d it is singular and the whitening fits noise. shrinkage=True replaces "
    "Σ_XX by the optimal linear shrinkage toward a scaled identity: the in-sample guard Cov(r(X), Z) = 0 still holds "
    "exactly (any invertible whitening keeps it), but the eraser is then no longer the least-squares optimum."
)


@dataclass(frozen=True)
class LEACE(Method):
    """Least-squares concept erasure (closed form).

    Parameters
    ----------
    method : {"leace", "orth"}
        ``leace``: the oblique least-squares eraser; ``orth``: the orthogonal projection out of ``colspace(Σ_XZ)``.
    affine : bool
        Subtract and restore the mean (``r(x) = x - L R (x - μ)``): keeps the unconditional mean.
    shrinkage : bool
        Shrink ``Σ_XX`` toward a scaled identity (for ``n`` not much larger than ``d``). Off by default: the
        exact least-squares eraser; the guard holds either way.
    svd_tol : float
        Singular values of ``W Σ_XZ`` below ``svd_tol · s_max`` are dropped (relative; concept-erasure uses an
        absolute 0.01, which can leave weak correlations in place).
    """

    method: Literal["leace", "orth"] = "leace"
    affine: bool = True
    shrinkage: bool = False
    svd_tol: float = 1e-6

    name: ClassVar[str] = "leace"
    continuous_ok: ClassVar[bool] = True
    small_sample_note: ClassVar[str] = _SHRINK_NOTE

    def __post_init__(self) -> None:
        check_choices(self, "method")
        if not self.svd_tol > 0:
            raise ConfigError(f"svd_tol must be positive, got {self.svd_tol}")

    @property
    def method_label(self) -> str:
        return self.method

    def solve(self, c: Concept) -> Solution:
        f = self.fitter(c.d, z_dim=c.Z.shape[1], device=c.X.device)
        f.update_matrix(c.X, c.Z)
        return f.solve(warn=False)

    def fitter(
        self, d: int, *, n_classes: int | None = None, z_dim: int | None = None, device: Any = None
    ) -> LeaceFitter:
        """A streaming fitter with these options (``n_classes`` for label batches, ``z_dim`` for matrices)."""
        return LeaceFitter(d, n_classes=n_classes, z_dim=z_dim, options=self, device=device)

    def fit_batches(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        d: int,
        n_classes: int | None = None,
        z_dim: int | None = None,
    ) -> Eraser:
        """Fit from an iterable of ``(X, z)`` batches without holding them all (e.g. an activation store)."""
        f = self.fitter(d, n_classes=n_classes, z_dim=z_dim)
        for X, z in batches:
            f.update(X, z)
        return f.eraser


class LeaceFitter:
    """Streaming statistics for LEACE: ``update(X, z)`` over batches, then ``.eraser``.

    Parameters
    ----------
    d : int
        Width of ``X``.
    n_classes : int, optional
        ``z`` batches are integer labels in ``[0, n_classes)`` (binary: one column; else one-hot).
    z_dim : int, optional
        ``z`` batches are float matrices ``[..., z_dim]`` (one-hot or continuous). Give exactly one of the two.
    options : LEACE, optional
        The eraser's options (default ``LEACE()``).
    """

    def __init__(
        self,
        d: int,
        *,
        n_classes: int | None = None,
        z_dim: int | None = None,
        options: LEACE | None = None,
        device: Any = None,
    ) -> None:
        if (n_classes is None) == (z_dim is None):
            raise ConfigError("give exactly one of n_classes (label batches) or z_dim (concept matrices)")
        if n_classes is not None and n_classes < 2:
            raise DataError(f"n_classes must be at least 2, got {n_classes}")
        self.d = int(d)
        self.n_classes = n_classes
        self.k = (1 if n_classes == 2 else n_classes) if n_classes is not None else int(z_dim)  # type: ignore[arg-type]
        self.options = options or LEACE()
        kw: dict[str, Any] = dict(dtype=torch.float64, device=device)
        self.n = 0
        self.mean_x = torch.zeros(self.d, **kw)
        self.mean_z = torch.zeros(self.k, **kw)
        self.scatter_xx = torch.zeros(self.d, self.d, **kw) if self.options.method == "leace" else None
        self.scatter_xz = torch.zeros(self.d, self.k, **kw)
        self.seconds = 0.0
        self.out_dtype = torch.float32  # float64 once any batch was float64
        self._eraser: Eraser | None = None

    def update(self, X: Float[Tensor, "... d"], z: Tensor) -> LeaceFitter:
        """Add a batch: ``X`` ``[..., d]`` and ``z`` (labels ``[...]`` or a matrix ``[..., z_dim]``)."""
        X = check_x(X, self.d)
        z = torch.as_tensor(z, device=X.device)
        if self.n_classes is not None:
            if tuple(z.shape) != tuple(X.shape[:-1]):
                raise ShapeError(f"labels have shape {tuple(z.shape)} but X has leading shape {tuple(X.shape[:-1])}")
            lab = z.reshape(-1).long()
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.n_classes):
                raise DataError(f"labels must lie in [0, {self.n_classes}), found [{int(lab.min())}, {int(lab.max())}]")
            Z = lab[:, None].double() if self.k == 1 else torch.nn.functional.one_hot(lab, self.k).double()
        else:
            if tuple(z.shape) != (*X.shape[:-1], self.k):
                raise ShapeError(f"z has shape {tuple(z.shape)}, expected {(*X.shape[:-1], self.k)}")
            Z = z.reshape(-1, self.k)
        return self.update_matrix(X.reshape(-1, self.d), Z)

    @torch.no_grad()
    def update_matrix(self, X: Float[Tensor, "n d"], Z: Float[Tensor, "n k"]) -> LeaceFitter:
        """Add a validated batch (``X`` ``[n, d]``, ``Z`` ``[n, k]``): Chan's pairwise merge of means and scatters."""
        t0 = time.perf_counter()
        if X.dtype == torch.float64:
            self.out_dtype = torch.float64
        dev = self.mean_x.device
        X = X.to(dev, torch.float64)
        Z = Z.to(dev, torch.float64)
        m = X.shape[0]
        if m == 0:
            return self
        mx, mz = X.mean(0), Z.mean(0)
        Xc, Zc = X - mx, Z - mz
        total = self.n + m
        dx, dz = mx - self.mean_x, mz - self.mean_z
        w = self.n * m / total
        if self.scatter_xx is not None:
            self.scatter_xx += Xc.T @ Xc + w * torch.outer(dx, dx)
        self.scatter_xz += Xc.T @ Zc + w * torch.outer(dx, dz)
        self.mean_x += dx * (m / total)
        self.mean_z += dz * (m / total)
        self.n = total
        self._eraser = None
        self.seconds += time.perf_counter() - t0
        return self

    @property
    def sigma_xx(self) -> Float[Tensor, "d d"]:
        """Covariance of X (Bessel-corrected; shrunk when ``shrinkage``)."""
        if self.scatter_xx is None:
            raise ConfigError("method='orth' does not track Σ_XX")
        self._need_data()
        S = (self.scatter_xx + self.scatter_xx.T) / 2
        if self.options.shrinkage:
            return linear_shrinkage(S / self.n, self.n)
        return S / (self.n - 1)

    @property
    def sigma_xz(self) -> Float[Tensor, "d k"]:
        """Cross-covariance of X and Z."""
        self._need_data()
        return self.scatter_xz / (self.n - 1)

    def _need_data(self) -> None:
        if self.n < 2:
            raise DataError(f"LEACE needs at least 2 samples, the fitter has seen {self.n}; call update() first")

    def solve(self, *, warn: bool = True) -> Solution:
        """The closed-form factors for the current statistics."""
        opt = self.options
        if warn and self.n <= self.d:
            warnings.warn(
                f"LEACE fitted on n={self.n} samples in d={self.d} dimensions (n <= d). " + _SHRINK_NOTE,
                ErasureWarning,
                stacklevel=3,
            )
        sxz = self.sigma_xz
        if float(sxz.abs().max()) == 0.0:
            raise DataError(
                "Cov(X, Z) is exactly zero: either one class only was seen, or X carries no linear trace "
                "of z; there is nothing to erase"
            )
        if opt.method == "leace":
            W, W_inv = whitening(self.sigma_xx)
        else:
            W = W_inv = None
        M = sxz if W is None else W @ sxz
        u = orthonormal_basis(M, rtol=opt.svd_tol)
        left = u if W_inv is None else W_inv @ u
        right = u.T if W is None else u.T @ W
        bias = self.mean_x.clone() if opt.affine else None
        s = torch.linalg.svdvals(M)
        return Solution(left, right, bias, card={"singular_values": s.tolist(), "n_samples": self.n})

    @property
    def eraser(self) -> Eraser:
        """The eraser for the statistics so far (cached until the next ``update``)."""
        if self._eraser is None:
            t0 = time.perf_counter()
            sol = self.solve()
            seconds = self.seconds + time.perf_counter() - t0
            classes = tuple(range(self.n_classes)) if self.n_classes else ()
            self._eraser = self.options.build(
                sol, d=self.d, classes=classes, n=self.n, seconds=seconds, dtype=self.out_dtype
            )
        return self._eraser
