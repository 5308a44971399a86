"""The SAE module: TopK (k-sparse, AuxK) and ReLU+L1 SAEs, plus JumpReLU for SAEs loaded from SAELens.

Notation (SAELens shapes): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``;
``f = act((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``. The encoder is stored as its transpose
``W_enc_T [d_sae, d_in]`` (contiguous rows for the sparse kernels); ``sae.W_enc`` is a view in SAELens's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..core.errors import ConfigError, ShapeError
from . import sparse as sp
from .config import ARCHITECTURES, SAEConfig

LN_EPS = 1e-5  # SAELens's layer_norm normalisation: (x - mean) / (std_unbiased + eps)


@dataclass
class StepOutput:
    """What one SAE's training loss returns to the trainer (tensors stay on device, detached except ``loss``)."""

    loss: Tensor
    fvu: Tensor
    l0: Tensor
    aux: Tensor
    fired: Tensor  # bool [d_sae]: latents that fired on this batch
    x_hat: Tensor | None = None
    codes: tuple[Tensor, Tensor] | None = None  # (vals, idx) for TopK; kept for joint losses


def geometric_median(x: Float[Tensor, "n d"], *, iters: int = 100, tol: float = 1e-6) -> Float[Tensor, " d"]:
    """Weiszfeld's algorithm, started at the mean (float64 accumulation)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * (1.0 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.float()


class SAE(nn.Module):
    """A sparse autoencoder (TopK, ReLU+L1, or JumpReLU when loaded from SAELens).

    Parameters
    ----------
    cfg : SAEConfig
        Architecture and hyper-parameters; ``cfg.d_in`` must be set.
    device, dtype
        Where the parameters live (float32 by default).
    meta : dict, optional
        Provenance saved with the SAE: ``model`` (spec), ``site`` (hook name), ``context_size``, ``tokens`` ...

    Notes
    -----
    ``activation`` is ``"topk"``, ``"relu"`` or ``"jumprelu"`` (SAELens JumpReLU folders); a subclass registered
    with :func:`register_architecture` keeps TopK behaviour unless it sets ``base_activation``.
    ``encode`` keeps ``round(alpha * k)`` latents (``cfg.k_infer``) unless ``k`` is given; ``forward`` uses the
    sparse decoder. Inputs may have any leading axes: ``[..., *input_shape]`` or ``[..., d_in]``.
    """

    base_activation: str = ""

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, Any] | None = None,
        jumprelu: bool = False,
        apply_b_dec_to_input: bool = True,
    ) -> None:
        super().__init__()
        if cfg.d_in is None:
            raise ConfigError("SAEConfig.d_in is not set; give the input width (the trainer fills it from the data)")
        self.cfg = cfg
        self.meta: dict[str, Any] = dict(meta or {})
        self.jumprelu = jumprelu
        self.activation = (
            "jumprelu" if jumprelu else (self.base_activation or ("relu" if cfg.architecture == "relu" else "topk"))
        )
        self.apply_b_dec_to_input = apply_b_dec_to_input
        m, d = cfg.d_sae, cfg.d_in
        gen = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(m, d, generator=gen, dtype=torch.float64)
        w = (w / w.norm(dim=1, keepdim=True)).to(dtype)
        self.W_dec = nn.Parameter(w.clone().to(device))
        self.W_enc_T = nn.Parameter(w.clone().to(device))  # encoder initialised as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        self.register_buffer("norm_scale", torch.ones((), dtype=dtype, device=device))
        if jumprelu:
            self.register_buffer("threshold", torch.zeros(m, dtype=dtype, device=device))
        self._ln: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ shapes
    @property
    def d_in(self) -> int:
        return int(self.cfg.d_in)  # type: ignore[arg-type]

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.cfg.shape

    @property
    def architecture(self) -> str:
        return "jumprelu" if self.jumprelu else self.cfg.architecture

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        """Encoder weight in SAELens's shape (a view of ``W_enc_T``)."""
        return self.W_enc_T.t()

    @property
    def site(self) -> str | None:
        return self.meta.get("site")

    def _flatten(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        shape = self.input_shape
        n = len(shape)
        if x.ndim >= n and tuple(x.shape[x.ndim - n :]) == shape:
            lead = tuple(x.shape[: x.ndim - n])
        elif x.ndim >= 1 and x.shape[-1] == self.d_in:
            lead = tuple(x.shape[:-1])
        else:
            raise ShapeError(f"SAE input must end in {shape} (or d_in={self.d_in}); got shape {tuple(x.shape)}")
        return x.reshape(-1, self.d_in).to(self.W_dec.dtype), lead

    # ------------------------------------------------------------ normalisation
    def normalize_in(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """Apply the input normalisation (and remember per-token statistics for :meth:`normalize_out`)."""
        if self.cfg.normalize == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            xc = x - mu
            std = xc.std(-1, keepdim=True)
            self._ln = (mu, std)
            return xc / (std + LN_EPS)
        if self.cfg.normalize == "scale":
            return x * self.norm_scale
        return x

    def normalize_out(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        if self.cfg.normalize == "layer_norm":
            if self._ln is None or self._ln[0].shape[0] != x.shape[0]:
                raise ShapeError("layer_norm SAE: decode needs the statistics of a preceding encode of the same batch")
            mu, std = self._ln
            return x * std + mu
        if self.cfg.normalize == "scale":
            return x / self.norm_scale
        return x

    # ------------------------------------------------------------------ encode
    def pre_acts(self, x_n: Float[Tensor, "n d"]) -> Float[Tensor, "n m"]:
        x_in = x_n - self.b_dec if self.apply_b_dec_to_input else x_n
        return torch.addmm(self.b_enc, x_in, self.W_enc_T.t())

    def _activate(self, pre: Tensor, k: int | None) -> Tensor:
        if self.jumprelu:
            return pre.relu() * (pre > self.threshold)
        if self.activation == "relu":
            return pre.relu()
        vals, idx = pre.topk(k or self.cfg.k_infer, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def encode(self, x: Float[Tensor, "... d_in"], *, k: int | None = None) -> Float[Tensor, "... d_sae"]:
        """Latent activations (dense). TopK keeps ``k`` latents (default ``round(alpha * k)``)."""
        x2, lead = self._flatten(x)
        if k is not None and not (self.activation == "topk" and 1 <= k <= self.d_sae):
            raise ConfigError(f"k={k} applies to TopK SAEs only and must be between 1 and d_sae={self.d_sae}")
        f = self._activate(self.pre_acts(self.normalize_in(x2)), k)
        return f.reshape(*lead, self.d_sae)

    def encode_topk(
        self, x: Float[Tensor, "... d_in"], *, k: int | None = None
    ) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
        """TopK codes as ``(values, latent indices)``, one row per token (flattened leading axes)."""
        if self.activation != "topk":
            raise ConfigError(f"encode_topk needs a TopK SAE, this one is {self.activation}")
        x2, _ = self._flatten(x)
        vals, idx = self.pre_acts(self.normalize_in(x2)).topk(k or self.cfg.k_infer, dim=-1, sorted=False)
        return vals.relu(), idx

    # ------------------------------------------------------------------ decode
    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction from dense latents."""
        if f.shape[-1] != self.d_sae:
            raise ShapeError(f"latents must end in d_sae={self.d_sae}, got shape {tuple(f.shape)}")
        lead = tuple(f.shape[:-1])
        out = self.normalize_out(f.reshape(-1, self.d_sae).to(self.W_dec.dtype) @ self.W_dec + self.b_dec)
        return out.reshape(*lead, *self.input_shape)

    def decode_topk(self, vals: Float[Tensor, "n k"], idx: Int[Tensor, "n k"]) -> Float[Tensor, "n d_in"]:
        """Reconstruction from TopK codes with the sparse decoder."""
        return self.normalize_out(sp.decode(vals, idx, self.W_dec, self.b_dec))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruct ``x`` (same shape)."""
        x2, lead = self._flatten(x)
        x_n = self.normalize_in(x2)
        pre = self.pre_acts(x_n)
        if self.activation == "topk":
            vals, idx = pre.topk(self.cfg.k_infer, dim=-1, sorted=False)
            out = self.decode_topk(vals.relu(), idx)
        else:
            out = self.normalize_out(self._activate(pre, None) @ self.W_dec + self.b_dec)
        return out.reshape(*lead, *self.input_shape)

    # ---------------------------------------------------------------- training
    def training_loss(
        self,
        x: Float[Tensor, "n d_in"],
        *,
        step: int,
        total_steps: int,
        dead: Tensor | None,
        sparse: bool = True,
        keep: bool = False,
    ) -> StepOutput:
        """Loss of one batch: variance-normalised MSE (= batch FVU) plus AuxK (TopK) or L1 (ReLU).

        ``dead`` is the boolean mask of latents that have not fired for ``cfg.dead_tokens`` tokens.
        ``keep`` returns the reconstruction and codes (for joint losses across SAEs).
        """
        if self.jumprelu:
            raise ConfigError("JumpReLU SAEs are loaded from SAELens for inference; mechwork trains topk and relu SAEs")
        x2, _ = self._flatten(x)
        x_n = self.normalize_in(x2)
        with torch.no_grad():
            total_var = (x_n - x_n.mean(0)).pow(2).sum().clamp_min(1e-12)
        zero = x_n.new_zeros(())
        if self.activation == "topk":
            return self._topk_loss(x_n, total_var, step, total_steps, dead, sparse, keep)
        pre = self.pre_acts(x_n)
        f = pre.relu()
        x_hat = f @ self.W_dec + self.b_dec
        fvu = (x_n - x_hat).pow(2).sum() / total_var
        rms = (total_var / x_n.shape[0]).sqrt()
        warm = max(1, int(self.cfg.l1_warmup * total_steps))
        coef = self.cfg.l1_coefficient * min(1.0, (step + 1) / warm)
        l1 = f.sum(-1).mean() / rms
        active = f > 0
        return StepOutput(
            fvu + coef * l1, fvu.detach(), active.sum(-1).float().mean(), zero, active.any(0), x_hat if keep else None
        )

    def _topk_loss(
        self, x_n: Tensor, total_var: Tensor, step: int, total_steps: int, dead: Tensor | None, sparse: bool, keep: bool
    ) -> StepOutput:
        k = self.cfg.k_at(step, total_steps)
        n_dead = 0 if dead is None else int(dead.sum())
        k_aux = min(self.cfg.k_aux_eff, n_dead) if self.cfg.aux_coefficient > 0 else 0
        x_in = x_n - self.b_dec
        vals, idx, aux_vals, aux_idx = sp.topk_encode(
            x_in, self.W_enc_T, self.b_enc, k, dead if k_aux else None, k_aux, sparse=sparse
        )
        x_hat = sp.decode(vals, idx, self.W_dec, self.b_dec, sparse=sparse)
        err = x_n - x_hat
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        aux = x_n.new_zeros(())
        if k_aux:
            e = err.detach()
            e_hat = sp.decode(aux_vals, aux_idx, self.W_dec, torch.zeros_like(self.b_dec), sparse=sparse)
            aux = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss = loss + self.cfg.aux_coefficient * min(1.0, n_dead / max(1, self.cfg.k_aux_eff)) * aux
        active = vals > 0
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=idx.device)
        fired[idx[active]] = True
        return StepOutput(
            loss,
            fvu.detach(),
            active.sum(-1).float().mean(),
            aux.detach(),
            fired,
            x_hat if keep else None,
            (vals, idx) if keep else None,
        )

    # ------------------------------------------------------------- constraints
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each (unit) decoder row."""
        g = self.W_dec.grad
        if g is not None:
            along = torch.einsum("md,md->m", g, self.W_dec)  # row dot products (a batched matmul: fast)
            g.addcmul_(self.W_dec, along[:, None], value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def init_from_data(self, sample: Float[Tensor, "n d_in"]) -> None:
        """Estimate the input scale (``normalize="scale"``) and ``b_dec`` (mean / geometric median) from data."""
        x, _ = self._flatten(sample.to(self.W_dec.device))
        if not torch.isfinite(x).all():
            from ..core.errors import NonFiniteError

            raise NonFiniteError("the activation sample used to initialise the SAE contains NaN or inf")
        if self.cfg.normalize == "scale":
            self.norm_scale.fill_(math.sqrt(self.d_in) / float(x.norm(dim=-1).mean().clamp_min(1e-12)))
        x_n = self.normalize_in(x)
        if self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x_n.mean(0))
        elif self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x_n[:32768]).to(self.b_dec.dtype))

    # -------------------------------------------------------------------- i/o
    def save(self, path: Any, *, card: dict[str, Any] | None = None, portable: bool = False) -> Any:
        """Write a SAELens-loadable folder (see :func:`mechwork.sae.io.save`)."""
        from .io import save

        return save(self, path, card=card, portable=portable)

    @classmethod
    def load(cls, path: Any, *, device: str | torch.device | None = None) -> SAE:
        from .io import load

        return load(path, device=device)

    def latents(self, source: Any = None, **kwargs: Any) -> Any:
        """Every latent described from one pass over ``source`` (see :func:`mechwork.sae.latent_stats`).

        ``sae.latents(model=model)[406]`` is latent 406's card (it renders in Jupyter).
        """
        from .latents import latent_stats

        return latent_stats(self, source, **kwargs)

    def extra_repr(self) -> str:
        sparsity = f"k={self.cfg.k}" if self.activation == "topk" else self.activation
        return f"d_in={self.d_in}, d_sae={self.d_sae}, {sparsity}, normalize={self.cfg.normalize!r}, site={self.site!r}"


#: SAE class per architecture name; the trainer builds ``SAE_CLASSES[cfg.architecture](cfg, ...)``.
SAE_CLASSES: dict[str, type[SAE]] = {"topk": SAE, "relu": SAE}


def register_architecture(name: str, cls: type[SAE]) -> None:
    """Make ``SAEConfig(architecture=name)`` build ``cls`` (a subclass of :class:`SAE`).

    A new architecture overrides what differs (``training_loss``, ``encode``/``decode``, the decoder constraint
    in ``remove_parallel_grad``/``normalize_decoder``, inputs that are not flat vectors) and trains with the
    same trainer: N SAEs per step, a joint loss, checkpoints and exact resume.
    """
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise ConfigError(f"{cls!r} is not a subclass of mechwork.sae.SAE")
    SAE_CLASSES[name] = cls
    if name not in ARCHITECTURES:
        ARCHITECTURES.append(name)
