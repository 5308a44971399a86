"""What every SAE shares: shapes, input normalisation, the linear dictionary, encode/decode, constraints, i/o.

Notation (SAELens shapes): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``;
``f = act((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``. The encoder is stored as its transpose
``W_enc_T [d_sae, d_in]`` (contiguous rows for the sparse kernels); ``sae.W_enc`` is a view in SAELens's shape.

An architecture subclasses :class:`SAE`, sets :attr:`SAE.activation` and implements :meth:`SAE._activate` and
:meth:`SAE.training_loss` (``topk.py``, ``relu.py``); operator SAEs (``operators.py``) also replace the
parameters and encode/decode. ``SAE(cfg)`` builds the class registered for ``cfg.architecture``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..core.errors import CheckpointError, ConfigError, NonFiniteError, ShapeError
from .config import SAEConfig

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


def check_tensors(w: dict[str, Tensor], expected: dict[str, tuple[int, ...]], where: Any, sae: Any = None) -> None:
    """Every expected tensor is present, of the expected shape and finite (errors name the file and tensor)."""
    sizes = f" (d_in={sae.d_in}, d_sae={sae.d_sae})" if sae is not None else ""
    for name, shape in expected.items():
        if name not in w:
            raise CheckpointError(f"{where} has no tensor {name!r}; the file is truncated or foreign")
        if tuple(w[name].shape) != tuple(shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(w[name].shape)}, expected {tuple(shape)}{sizes}")
        if not torch.isfinite(w[name]).all():
            raise CheckpointError(f"{where}: {name} contains NaN or inf")


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
    """A sparse autoencoder; ``SAE(cfg)`` builds the module registered for ``cfg.architecture``.

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
    ``activation`` is ``"topk"``, ``"relu"`` or ``"jumprelu"`` (how codes are computed; readers such as the
    latent scan branch on it). Inputs may have any leading axes: ``[..., *input_shape]`` or ``[..., d_in]``.
    """

    activation: ClassVar[str] = ""
    #: SAELens's own architecture name this SAE exports as (None: only the registered mechwork name)
    saelens_name: ClassVar[str | None] = None

    def __new__(cls, cfg: SAEConfig | None = None, *args: Any, **kwargs: Any) -> SAE:
        if cls is SAE:
            if cfg is None:
                raise ConfigError("SAE(cfg) needs a config")
            from . import registry

            cls = registry.module_for(cfg.architecture)  # type: ignore[assignment]
        return super().__new__(cls)

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, Any] | None = None,
        apply_b_dec_to_input: bool = True,
    ) -> None:
        super().__init__()
        if cfg.d_in is None:
            raise ConfigError("SAEConfig.d_in is not set; give the input width (the trainer fills it from the data)")
        from . import registry

        own = registry.config_for(cfg.architecture)
        if not isinstance(cfg, own):
            raise ConfigError(f"{type(self).__name__} needs a {own.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.meta: dict[str, Any] = dict(meta or {})
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.register_buffer("norm_scale", torch.ones((), dtype=dtype, device=device))
        self._ln: tuple[Tensor, Tensor] | None = None
        self.init_parameters(device=device, dtype=dtype)

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        """A linear dictionary: unit decoder rows (seeded), encoder = decoder transpose, zero biases."""
        m, d = self.cfg.d_sae, self.d_in
        gen = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(m, d, generator=gen, dtype=torch.float64)
        w = (w / w.norm(dim=1, keepdim=True)).to(dtype)
        self.W_dec = nn.Parameter(w.clone().to(device))
        self.W_enc_T = nn.Parameter(w.clone().to(device))  # encoder initialised as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))

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
        return self.cfg.architecture

    @property
    def jumprelu(self) -> bool:
        return self.activation == "jumprelu"

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
        raise NotImplementedError

    def _check_k(self, k: int | None) -> None:
        if k is not None:
            raise ConfigError(f"k={k} applies to TopK SAEs only; this one is {self.activation}")

    def encode(self, x: Float[Tensor, "... d_in"], *, k: int | None = None) -> Float[Tensor, "... d_sae"]:
        """Latent activations (dense). TopK keeps ``k`` latents (default ``round(alpha * k)``)."""
        x2, lead = self._flatten(x)
        self._check_k(k)
        f = self._activate(self.pre_acts(self.normalize_in(x2)), k)
        return f.reshape(*lead, self.d_sae)

    # ------------------------------------------------------------------ decode
    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction from dense latents."""
        if f.shape[-1] != self.d_sae:
            raise ShapeError(f"latents must end in d_sae={self.d_sae}, got shape {tuple(f.shape)}")
        lead = tuple(f.shape[:-1])
        out = self.normalize_out(f.reshape(-1, self.d_sae).to(self.W_dec.dtype) @ self.W_dec + self.b_dec)
        return out.reshape(*lead, *self.input_shape)

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruct ``x`` (same shape)."""
        x2, lead = self._flatten(x)
        pre = self.pre_acts(self.normalize_in(x2))
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
        """Loss of one batch (variance-normalised MSE = batch FVU, plus the architecture's sparsity terms).

        ``dead`` is the boolean mask of latents that have not fired for ``cfg.dead_tokens`` tokens.
        ``keep`` returns the reconstruction and codes (for joint losses across SAEs).
        """
        raise ConfigError(
            f"{self.architecture} SAEs are for inference only (loaded from SAELens); they are not trained"
        )

    def _normalized_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The normalised batch and its total variance (the denominator of the batch FVU)."""
        x2, _ = self._flatten(x)
        x_n = self.normalize_in(x2)
        with torch.no_grad():
            total_var = (x_n - x_n.mean(0)).pow(2).sum().clamp_min(1e-12)
        return x_n, total_var

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
            raise NonFiniteError("the activation sample used to initialise the SAE contains NaN or inf")
        if self.cfg.normalize == "scale":
            self.norm_scale.fill_(math.sqrt(self.d_in) / float(x.norm(dim=-1).mean().clamp_min(1e-12)))
        x_n = self.normalize_in(x)
        if self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x_n.mean(0))
        elif self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x_n[:32768]).to(self.b_dec.dtype))

    def folded_weights(self) -> dict[str, Tensor]:
        """``W_enc, b_enc, W_dec, b_dec`` with the constant input scale folded in (same codes, same output)."""
        s = float(self.norm_scale)
        return {"W_enc": (self.W_enc_T * s).t(), "b_enc": self.b_enc, "W_dec": self.W_dec / s, "b_dec": self.b_dec / s}

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold ``norm_scale`` into the weights and set it to 1 (SAELens folds its scaling factor the same way)."""
        if float(self.norm_scale) == 1.0:
            return
        w = self.folded_weights()
        self.W_enc_T.copy_(w["W_enc"].t())
        self.W_dec.copy_(w["W_dec"])
        self.b_dec.copy_(w["b_dec"])
        self.norm_scale.fill_(1.0)

    # -------------------------------------------------------------------- i/o
    def export_tensors(self) -> dict[str, Tensor]:
        """The tensors of ``sae_weights.safetensors``: SAELens's names, the input scale folded in."""
        out = self.folded_weights()
        if self.activation == "jumprelu":
            out["threshold"] = self.threshold  # type: ignore[assignment]
        return out

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor :meth:`import_tensors` needs."""
        d, m = self.d_in, self.d_sae
        out = {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}
        if self.activation == "jumprelu":
            out["threshold"] = (m,)
        return out

    @torch.no_grad()
    def import_tensors(self, w: dict[str, Tensor], raw: dict[str, Any], where: Any) -> None:
        """Fill the parameters from a folder's tensors (checked: present, shaped, finite); ``raw`` is its cfg.json."""
        check_tensors(w, self.expected_tensors(), where, self)
        W_enc, b_enc, W_dec = w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float()
        if raw.get("rescale_acts_by_decoder_norm"):
            # SAELens's topk with rescaling: fold the decoder norms in (same codes, same reconstruction)
            norms = W_dec.norm(dim=-1).clamp_min(1e-8)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        scale = w.get("norm_scale")  # folders of mechwork <= 0.1 kept the scale unfolded
        if scale is not None and (scale.numel() != 1 or not math.isfinite(float(scale)) or float(scale) <= 0):
            raise CheckpointError(f"{where}: norm_scale must be one positive number, found {scale.tolist()}")
        self.W_enc_T.copy_(W_enc.t())
        self.b_enc.copy_(b_enc)
        self.W_dec.copy_(W_dec)
        self.b_dec.copy_(w["b_dec"])
        if scale is not None:
            self.norm_scale.fill_(float(scale))
        if self.activation == "jumprelu":
            self.threshold.copy_(w["threshold"])  # type: ignore[operator]

    def saelens_fields(self) -> dict[str, Any]:
        """Architecture-specific top-level fields of SAELens's ``cfg.json``."""
        return {}

    def save(self, path: Any, *, card: dict[str, Any] | None = None, portable: bool = True) -> Any:
        """Write a SAELens folder (see :func:`mechwork.sae.io.save`)."""
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
        return f"d_in={self.d_in}, d_sae={self.d_sae}, {self.activation}, normalize={self.cfg.normalize!r}, site={self.site!r}"

    def _repr_html_(self) -> str:
        from ..viz.cards import sae_card

        return sae_card(self)
