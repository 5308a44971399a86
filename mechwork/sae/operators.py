"""SAE neural operators (Tolooshams, Shen, Anandkumar, arXiv 2509.03738): SAEs whose inputs are functions.

Inputs are functions sampled on a periodic grid, ``[batch, channels, n]``. Four architectures:

* **SAE** on the flattened grid: the ordinary ``topk`` / ``relu`` SAE with ``input_shape=(channels, n)``.
* **lifted** (:class:`LiftedSAE`): a pointwise lifting ``P: R^C -> R^L`` at every grid point, a TopK SAE on the
  lifted function (``L * n`` values), the projection ``Q: R^L -> R^C`` back. The function class is that of the
  flat SAE (everything is linear but the TopK); lifting changes the optimisation (the paper's "preconditioner").
* **cnn** (:class:`CNNSAE`): circular convolutional encoder and decoder with ``d_sae`` concept channels and a
  kernel of ``kernel`` grid points: codes ``z [d_sae, n]``, ``x_hat = sum_c phi_c * z_c``.
* **fno** (:class:`FNOSAE`): encoder and decoder are spectral convolutions on the first ``modes`` Fourier modes
  (``torch.fft.rfft`` / ``irfft``), written as integral operators so they do not depend on the grid: the
  decoder is ``x_hat(s) = int z(t) phi(s - t) dt`` with concept ``phi_c`` = the inverse FFT of its weights,
  evaluable at any resolution (:meth:`FNOSAE.concepts`). ``modes = n // 2 + 1`` (full) is any circular
  convolution (it emulates :class:`CNNSAE` with a full-width kernel); fewer modes band-limit the concepts.
  ``lift > 0`` lifts to ``lift`` channels first (lifted SAE-NO).

Sparsity. The convolutional SAEs use ReLU codes with an L1 penalty on the code *density* (mean over grid
points, i.e. the integral), plus a learned per-channel bias acting as a threshold. A fixed TopK count does not
carry over between resolutions (at twice the resolution a bump of code has twice the points), a threshold and
an integral do, so this is what makes the FNO's codes resolution independent. The lifted SAE keeps TopK over
its ``d_sae`` latents (like the flat SAE it is compared with; it only runs at its training resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..core.errors import ConfigError, ShapeError
from . import sparse as sp
from .base import SAE, StepOutput, check_tensors
from .config import SAEConfig
from .topk import TopKConfig, TopKSAE


def _grid_shape(cfg: SAEConfig) -> tuple[int, int]:
    shape = cfg.input_shape
    if shape is None or len(shape) != 2:
        got = tuple(shape) if shape is not None else (cfg.d_in,)
        raise ConfigError(
            f"{cfg.architecture} SAEs take functions, [batch, channels, grid]; the per-sample shape is {got} "
            "(give a 3-d tensor, or --from-tensor FILE with [n, channels, grid])"
        )
    return int(shape[0]), int(shape[1])


class _StateTensors:
    """Operator SAEs save their own parameters under their own names (SAELens has no such architecture)."""

    def export_tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if k != "norm_scale"}  # type: ignore[attr-defined]

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.export_tensors().items()}

    @torch.no_grad()
    def import_tensors(self, w: dict[str, Tensor], raw: dict[str, Any], where: Any) -> None:
        check_tensors(w, self.expected_tensors(), where, self)
        self.load_state_dict({**w, "norm_scale": self.norm_scale}, strict=True)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------- lifted
@dataclass(frozen=True)
class LiftedConfig(TopKConfig):
    """Lifted TopK SAE on ``[channels, grid]`` functions (all TopK fields, plus ``lift``).

    Parameters
    ----------
    lift : int
        Channels of the pointwise lifting (``L``); the SAE sees ``lift * grid`` values.
    """

    architecture: str = "lifted"
    lift: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lift < 1:
            raise ConfigError(f"lift must be >= 1, got {self.lift}")
        if self.normalize == "scale" or self.normalize == "layer_norm":
            raise ConfigError("operator SAEs take normalize='none' (normalise the functions beforehand)")

    @property
    def sparsity_label(self) -> str:
        return f"k{self.k}_L{self.lift}"


class LiftedSAE(_StateTensors, TopKSAE):
    """``x -> P x`` (pointwise, ``L`` channels) ``-> TopK SAE on R^{L n} -> Q`` (pointwise back to ``C``)."""

    cfg: LiftedConfig
    saelens_name: ClassVar[str | None] = None

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        c, n = _grid_shape(self.cfg)
        L, m = self.cfg.lift, self.cfg.d_sae
        gen = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(m, L * n, generator=gen, dtype=torch.float64)
        w = (w / w.norm(dim=1, keepdim=True)).to(dtype)
        self.W_dec = nn.Parameter(w.clone().to(device))
        self.W_enc_T = nn.Parameter(w.clone().to(device))
        self.b_enc = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(L * n, dtype=dtype, device=device))
        p = torch.randn(L, c, generator=gen, dtype=torch.float64) / math.sqrt(c)
        self.P = nn.Parameter(p.to(dtype).to(device))
        self.Q = nn.Parameter(torch.linalg.pinv(p).to(dtype).to(device))  # Q P = I at the start

    def _lift(self, x2: Tensor) -> Tensor:
        c, n = _grid_shape(self.cfg)
        return torch.einsum("lc,bcn->bln", self.P, x2.reshape(-1, c, n)).reshape(x2.shape[0], -1)

    def _project(self, u: Tensor) -> Tensor:
        c, n = _grid_shape(self.cfg)
        return torch.einsum("cl,bln->bcn", self.Q, u.reshape(u.shape[0], self.cfg.lift, n)).reshape(u.shape[0], -1)

    def pre_acts(self, x_n: Float[Tensor, "n d"]) -> Float[Tensor, "n m"]:
        return torch.addmm(self.b_enc, self._lift(x_n) - self.b_dec, self.W_enc_T.t())

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... c n"]:
        if f.shape[-1] != self.d_sae:
            raise ShapeError(f"latents must end in d_sae={self.d_sae}, got shape {tuple(f.shape)}")
        lead = tuple(f.shape[:-1])
        u = f.reshape(-1, self.d_sae).to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return self._project(u).reshape(*lead, *self.input_shape)

    def decode_topk(self, vals: Tensor, idx: Tensor) -> Tensor:
        return self._project(sp.decode(vals, idx, self.W_dec, self.b_dec))

    def dictionary(self) -> Float[Tensor, "d_sae c n"]:
        """The atoms in input space: ``Q`` applied to each lifted decoder row."""
        c, n = _grid_shape(self.cfg)
        return torch.einsum("cl,mln->mcn", self.Q, self.W_dec.reshape(self.d_sae, self.cfg.lift, n))

    def _code_input(self, x_n: Tensor) -> Tensor:
        return self._lift(x_n) - self.b_dec

    def _code_output(self, u: Tensor) -> Tensor:
        return self._project(u)

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        x, _ = self._flatten(sample.to(self.W_dec.device))
        if self.cfg.b_dec_init != "zeros":
            self.b_dec.copy_(self._lift(x).mean(0))

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.cfg.k_infer}


# ----------------------------------------------------------------------------------------------- conv SAEs
@dataclass(frozen=True)
class ConvConfig(SAEConfig):
    """Shared fields of the convolutional SAE operators (``d_sae`` = concept channels).

    Parameters
    ----------
    l1_coefficient : float
        Weight of the L1 penalty on the codes as a measure on [0, 1) (their integral: the grid mean of a density
        for the FNO, the sum of point masses for the CNN, so one value means the same for both), in units of
        the RMS input value.
    l1_warmup : float
        Fraction of training over which the L1 weight rises linearly from 0.
    iterations : int
        Unrolled ISTA refinements of the codes after the encoder (0: a one-pass encoder, as an SAE).
    """

    l1_coefficient: float = 0.005
    l1_warmup: float = 0.05
    iterations: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coefficient < 0 or not 0.0 <= self.l1_warmup <= 1.0 or self.iterations < 0:
            raise ConfigError("l1_coefficient must be >= 0, l1_warmup in [0, 1] and iterations >= 0")
        if self.normalize != "none":
            raise ConfigError("operator SAEs take normalize='none' (normalise the functions beforehand)")


class _ConvSAE(_StateTensors, SAE):
    """Codes ``z [batch, d_sae, n]`` = relu(encoder(x) + b_enc); ``x_hat`` = decoder(z) + b_dec (per channel)."""

    activation: ClassVar[str] = "relu"
    saelens_name: ClassVar[str | None] = None
    resolution_free: ClassVar[bool] = True
    densities: ClassVar[bool] = False  # codes are densities (integrated by the decoder) or point masses

    def _grid(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        c, n = _grid_shape(self.cfg)
        if x.ndim < 2 or x.shape[-2] != c:
            raise ShapeError(
                f"{self.architecture} SAE input must be [..., channels={c}, grid]; got shape {tuple(x.shape)}"
            )
        if not self.resolution_free and x.shape[-1] != n:
            raise ShapeError(f"this {self.architecture} SAE runs on its training grid n={n}; got n={x.shape[-1]}")
        return x.reshape(-1, c, x.shape[-1]).to(self.b_dec.dtype), tuple(x.shape[:-2])

    def _flatten(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        x3, lead = self._grid(x)
        return x3.reshape(x3.shape[0], -1), lead

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        c, _ = _grid_shape(self.cfg)
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(c, dtype=dtype, device=device))

    def codes(self, x3: Tensor) -> Tensor:
        """ReLU codes; with ``iterations`` > 0, that many unrolled ISTA refinements
        ``z <- relu(z + E(x - D z - b_dec) + b_enc)`` (the encoder as the step, the bias as the threshold)."""
        z = (self.encode_pre(x3) + self.b_enc[:, None]).relu()
        for _ in range(self.cfg.iterations):
            r = x3 - self.decode_codes(z) - self.b_dec[:, None]
            z = (z + self.encode_pre(r) + self.b_enc[:, None]).relu()
        return z

    def encode(self, x: Float[Tensor, "... c n"], *, k: int | None = None) -> Float[Tensor, "... d_sae n"]:
        """Codes: one non-negative function per concept channel, ``[..., d_sae, n]``."""
        self._check_k(k)
        x3, lead = self._grid(x)
        z = self.codes(x3)
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, z: Float[Tensor, "... d_sae n"]) -> Float[Tensor, "... c n"]:
        if z.ndim < 2 or z.shape[-2] != self.d_sae:
            raise ShapeError(f"codes must be [..., d_sae={self.d_sae}, grid]; got shape {tuple(z.shape)}")
        z3 = z.reshape(-1, *z.shape[-2:]).to(self.b_dec.dtype)
        out = self.decode_codes(z3) + self.b_dec[:, None]
        return out.reshape(*z.shape[:-2], *out.shape[1:])

    def forward(self, x: Float[Tensor, "... c n"]) -> Float[Tensor, "... c n"]:
        return self.decode(self.encode(x))

    def training_loss(self, x, *, step, total_steps, dead, sparse=True, keep=False) -> StepOutput:
        x3, _ = self._grid(x)
        with torch.no_grad():
            total_var = (x3 - x3.mean(0)).pow(2).sum().clamp_min(1e-12)
        z = self.codes(x3)
        x_hat = self.decode_codes(z) + self.b_dec[:, None]
        fvu = (x3 - x_hat).pow(2).sum() / total_var
        rms = (total_var / x3[:, :1].numel()).sqrt()  # RMS over samples and grid, summed over channels
        warm = max(1, int(self.cfg.l1_warmup * total_steps))
        coef = self.cfg.l1_coefficient * min(1.0, (step + 1) / warm)
        # L1 of the code as a measure (its integral): densities (FNO) average over the grid, point masses sum
        l1 = (z.sum(1).mean(-1) if self.densities else z.sum((1, 2))).mean() / rms
        active = z > 0
        l0 = active.float().sum(1).mean()  # active (channel, point) pairs per grid point
        fired = active.any(2).any(0)
        return StepOutput(fvu + coef * l1, fvu.detach(), l0, x3.new_zeros(()), fired, x_hat if keep else None)

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        x3, _ = self._grid(sample.to(self.b_dec.device))
        if self.cfg.b_dec_init != "zeros":
            self.b_dec.copy_(x3.mean((0, 2)))

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        """Decoder concepts flattened, one row per concept (for the generic constraint code paths)."""
        return self.dec_weight.reshape(self.d_sae, -1)

    def remove_parallel_grad(self) -> None:
        return None

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm concepts (on the training grid: ``mean over grid of phi^2 = 1``)."""
        self._renormalize()

    def extra_repr(self) -> str:
        c, n = _grid_shape(self.cfg)
        return f"channels={c}, grid={n}, concepts={self.d_sae}, site={self.site!r}"


@dataclass(frozen=True)
class CNNConfig(ConvConfig):
    """SAE-CNN (see :class:`ConvConfig`).

    Parameters
    ----------
    kernel : int
        Kernel width in grid points (odd), for encoder and decoder.
    """

    architecture: str = "cnn"
    kernel: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        _, n = _grid_shape(self) if self.input_shape is not None else (0, 0)
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"kernel must be a positive odd number of grid points, got {self.kernel}")
        if n and self.kernel > n:
            raise ConfigError(f"kernel={self.kernel} is wider than the grid n={n}")

    @property
    def sparsity_label(self) -> str:
        return f"l1-{self.l1_coefficient:g}_w{self.kernel}"


class CNNSAE(_ConvSAE):
    """Circular Conv1d encoder ``[d_sae, C, w]`` and decoder ``[C, d_sae, w]`` (kernels in grid points)."""

    cfg: CNNConfig

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        super().init_parameters(device=device, dtype=dtype)
        c, _ = _grid_shape(self.cfg)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(self.cfg.d_sae, c, self.cfg.kernel, generator=gen, dtype=torch.float64)
        w = w / w.flatten(1).norm(dim=1)[:, None, None]
        self.enc_weight = nn.Parameter(w.to(dtype).to(device))
        self.dec_weight = nn.Parameter(w.flip(-1).to(dtype).to(device))  # decoder = encoder's adjoint

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        p = self.cfg.kernel // 2
        return F.conv1d(F.pad(x, (p, p), mode="circular"), w)

    def encode_pre(self, x3: Tensor) -> Tensor:
        return self._conv(x3, self.enc_weight)

    def decode_codes(self, z: Tensor) -> Tensor:
        # x_hat_c = sum_k phi_{k,c} * z_k (a convolution): conv1d with the kernel flipped and transposed
        return self._conv(z, self.dec_weight.permute(1, 0, 2).flip(-1))

    def _renormalize(self) -> None:
        self.dec_weight /= self.dec_weight.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]

    def concepts(self, n: int | None = None) -> Float[Tensor, "d_sae c n"]:
        """Concepts on the training grid, centred at 0 (circularly); a CNN has no other resolution."""
        c, n0 = _grid_shape(self.cfg)
        out = torch.zeros(self.d_sae, c, n0, dtype=self.dec_weight.dtype, device=self.dec_weight.device)
        p = self.cfg.kernel // 2
        for i in range(self.cfg.kernel):
            out[..., (i - p) % n0] = self.dec_weight[..., i]
        return out


@dataclass(frozen=True)
class FNOConfig(ConvConfig):
    """SAE-FNO (see :class:`ConvConfig`).

    Parameters
    ----------
    modes : int
        Fourier modes kept (``grid // 2 + 1`` = all of them); at most ``grid // 2 + 1`` of the training grid.
    lift : int
        Channels of a pointwise lifting before the operator (0: none).
    local : bool
        Add a pointwise linear term to the encoder (``W_loc v``, as in FNO layers).
    """

    architecture: str = "fno"
    modes: int = 16
    lift: int = 0
    local: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modes < 1 or self.lift < 0:
            raise ConfigError(f"modes must be >= 1 and lift >= 0, got modes={self.modes}, lift={self.lift}")
        if self.input_shape is not None:
            _, n = _grid_shape(self)
            if self.modes > n // 2 + 1:
                raise ConfigError(
                    f"modes={self.modes} needs a grid of at least {2 * (self.modes - 1)} points; the grid has n={n} "
                    f"(at most {n // 2 + 1} modes)"
                )

    @property
    def sparsity_label(self) -> str:
        return f"l1-{self.l1_coefficient:g}_m{self.modes}" + (f"_L{self.lift}" if self.lift else "")


class FNOSAE(_ConvSAE):
    """Spectral-convolution encoder and decoder on the first ``modes`` modes; runs at any resolution."""

    cfg: FNOConfig
    densities: ClassVar[bool] = True

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        super().init_parameters(device=device, dtype=dtype)
        c, _ = _grid_shape(self.cfg)
        K, m, L = self.cfg.d_sae, self.cfg.modes, self.cfg.lift
        width = L or c
        gen = torch.Generator().manual_seed(self.cfg.seed)
        # start from random kernels localised on a third of the training grid (as a CNN's), in Fourier form
        n = _grid_shape(self.cfg)[1]
        w = max(3, n // 3)
        ker = torch.zeros(K, width, n, dtype=torch.float64)
        ker[..., :w] = torch.randn(K, width, w, generator=gen, dtype=torch.float64)
        ker = ker.roll(-(w // 2), dims=-1)
        dec = torch.view_as_real(torch.fft.rfft(ker, norm="forward")[..., :m])  # [K, width, m, 2]
        enc = dec.clone()
        enc[..., 1] *= -1  # conjugate: the encoder starts as the decoder's adjoint (a matched filter)
        self.enc_weight = nn.Parameter(enc.to(dtype).to(device))
        self.dec_weight = nn.Parameter(dec.transpose(0, 1).contiguous().to(dtype).to(device))  # [width, K, m, 2]
        if self.cfg.local:
            self.enc_local = nn.Parameter(torch.zeros(K, width, dtype=dtype, device=device))
        if L:
            p = torch.randn(L, c, generator=gen, dtype=torch.float64) / math.sqrt(c)
            self.P = nn.Parameter(p.to(dtype).to(device))
            self.Q = nn.Parameter(torch.linalg.pinv(p).to(dtype).to(device))
        with torch.no_grad():
            self._renormalize()

    def _spectral(self, v: Tensor, w: Tensor, eq: str) -> Tensor:
        n = v.shape[-1]
        m = min(self.cfg.modes, n // 2 + 1)  # a coarser grid holds fewer modes
        V = torch.fft.rfft(v, norm="forward")[..., :m]
        out = torch.einsum(eq, V, torch.view_as_complex(w[..., :m, :].contiguous()))
        return torch.fft.irfft(out, n=n, norm="forward")

    def encode_pre(self, x3: Tensor) -> Tensor:
        v = torch.einsum("lc,bcn->bln", self.P, x3) if self.cfg.lift else x3
        pre = self._spectral(v, self.enc_weight, "bln,kln->bkn")
        if self.cfg.local:
            pre = pre + torch.einsum("kl,bln->bkn", self.enc_local, v)
        return pre

    def decode_codes(self, z: Tensor) -> Tensor:
        u = self._spectral(z, self.dec_weight, "bkn,lkn->bln")
        return torch.einsum("cl,bln->bcn", self.Q, u) if self.cfg.lift else u

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        return self.dec_weight.transpose(0, 1).reshape(self.d_sae, -1)

    def _norms(self) -> Tensor:
        """L2 norm of each concept function in input space (Parseval; modes >= 1 count twice, Hermitian)."""
        r = self.dec_weight
        if self.cfg.lift:  # the concept in input space is Q applied to the lifted one
            r = torch.einsum("cl,lkmz->ckmz", self.Q, r)
        w = torch.full((self.cfg.modes,), 2.0, dtype=r.dtype, device=r.device)
        w[0] = 1.0
        return (r.pow(2).sum(-1) * w).sum((0, 2)).sqrt()

    def _renormalize(self) -> None:
        self.dec_weight /= self._norms().clamp_min(1e-8)[None, :, None, None]

    def concepts(self, n: int = 256) -> Float[Tensor, "d_sae c n"]:
        """Each concept as a function on a grid of ``n`` points (the inverse FFT of its decoder weights)."""
        K = self.d_sae
        spec = torch.view_as_complex(self.dec_weight.contiguous())[..., : min(self.cfg.modes, n // 2 + 1)]
        u = torch.fft.irfft(spec, n=n, norm="forward").transpose(0, 1)  # [K, width, n]
        return torch.einsum("cl,kln->kcn", self.Q, u) if self.cfg.lift else u.reshape(K, -1, n)


__all__ = ["LiftedConfig", "LiftedSAE", "ConvConfig", "CNNConfig", "CNNSAE", "FNOConfig", "FNOSAE"]
