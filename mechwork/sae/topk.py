"""TopK (k-sparse) SAE: Makhzani & Frey's k-sparse autoencoder with Gao et al.'s AuxK loss and k schedule.

``f = scatter(topk(relu))`` of ``(x - b_dec) W_enc + b_enc``; training uses the sparse kernels of
:mod:`mechwork.sae.sparse` (only the selected latents are touched after the encoder matmul). Exported as
SAELens's own ``topk`` architecture (``k = round(alpha * k)``, no decoder-norm rescaling), so plain SAELens
loads the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.errors import ConfigError
from . import sparse as sp
from .base import SAE, StepOutput
from .config import SAEConfig


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """A TopK SAE (see :class:`~mechwork.sae.SAEConfig` for the shared fields).

    Parameters
    ----------
    k : int
        Active latents per token at the end of training.
    alpha : float
        Inference-time multiplier: :meth:`TopKSAE.encode` keeps ``round(alpha * k)`` latents (Makhzani & Frey's
        alpha-k encoding). 1.0 reproduces the training sparsity.
    k_start : int or None
        Start of the k schedule: k decreases linearly from ``k_start`` to ``k`` over the first ``k_anneal``
        fraction of training, then stays at ``k``. ``None`` trains at ``k`` throughout.
    k_anneal : float
        Fraction of the training steps over which k decreases.
    k_aux : int or None
        Dead latents used by the AuxK loss per token (default ``d_in // 2``, Gao et al. App. B.1).
    aux_coefficient : float
        Weight of the AuxK loss (Gao et al.: 1/32), on a residual-variance-normalised MSE.
    """

    architecture: str = "topk"
    k: int = 32
    alpha: float = 1.0
    k_start: int | None = None
    k_anneal: float = 0.5
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must be between 1 and d_sae={self.d_sae}, got k={self.k}")
        if self.k_start is not None and not self.k <= self.k_start <= self.d_sae:
            raise ConfigError(f"k_start must be between k={self.k} and d_sae={self.d_sae}, got {self.k_start}")
        if self.alpha < 1.0 or round(self.alpha * self.k) > self.d_sae:
            raise ConfigError(f"alpha must be >= 1 with round(alpha*k) <= d_sae, got alpha={self.alpha}, k={self.k}")
        if not 0.0 <= self.k_anneal <= 1.0:
            raise ConfigError("k_anneal is a fraction of training between 0 and 1")
        if self.k_aux is not None and self.k_aux < 0:
            raise ConfigError(f"k_aux must be >= 0, got {self.k_aux}")

    @property
    def k_infer(self) -> int:
        """Latents kept by :meth:`TopKSAE.encode` at inference: ``round(alpha * k)``."""
        return int(round(self.alpha * self.k))

    @property
    def k_aux_eff(self) -> int:
        return (self.d_in or 0) // 2 if self.k_aux is None else self.k_aux

    @property
    def sparsity_label(self) -> str:
        return f"k{self.k}"

    def k_at(self, step: int, total_steps: int) -> int:
        """k used at training ``step`` (the k-sparse schedule)."""
        if self.k_start is None or self.k_start == self.k or total_steps <= 0:
            return self.k
        n = max(1, int(self.k_anneal * total_steps))
        if step >= n:
            return self.k
        return int(round(self.k_start + (self.k - self.k_start) * step / n))


class TopKSAE(SAE):
    """k-sparse autoencoder: ``encode`` keeps ``round(alpha * k)`` latents unless ``k`` is given; ``forward``
    uses the sparse decoder."""

    activation: ClassVar[str] = "topk"
    saelens_name: ClassVar[str | None] = "topk"
    cfg: TopKConfig

    def _check_k(self, k: int | None) -> None:
        if k is not None and not 1 <= k <= self.d_sae:
            raise ConfigError(f"k={k} must be between 1 and d_sae={self.d_sae}")

    def _activate(self, pre: Tensor, k: int | None) -> Tensor:
        vals, idx = pre.topk(k or self.cfg.k_infer, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def encode_topk(
        self, x: Float[Tensor, "... d_in"], *, k: int | None = None
    ) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
        """TopK codes as ``(values, latent indices)``, one row per token (flattened leading axes)."""
        x2, _ = self._flatten(x)
        self._check_k(k)
        vals, idx = self.pre_acts(self.normalize_in(x2)).topk(k or self.cfg.k_infer, dim=-1, sorted=False)
        return vals.relu(), idx

    def decode_topk(self, vals: Float[Tensor, "n k"], idx: Int[Tensor, "n k"]) -> Float[Tensor, "n d_in"]:
        """Reconstruction from TopK codes with the sparse decoder."""
        return self.normalize_out(sp.decode(vals, idx, self.W_dec, self.b_dec))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        x2, lead = self._flatten(x)
        vals, idx = self.pre_acts(self.normalize_in(x2)).topk(self.cfg.k_infer, dim=-1, sorted=False)
        return self.decode_topk(vals.relu(), idx).reshape(*lead, *self.input_shape)

    def _code_input(self, x_n: Tensor) -> Tensor:
        """What the encoder reads during training (a lifted SAE lifts first)."""
        return x_n - self.b_dec

    def _code_output(self, u: Tensor) -> Tensor:
        """Decoder output -> reconstruction (a lifted SAE projects back)."""
        return u

    def encoder_rows(self) -> Tensor:
        """``W_enc_T`` as the encoder sees it (a tied subclass returns the decoder)."""
        return self.W_enc_T

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
        """Batch FVU plus AuxK: the top ``k_aux`` dead latents reconstruct the detached residual."""
        x_n, total_var = self._normalized_batch(x)
        k = self.cfg.k_at(step, total_steps)
        n_dead = 0 if dead is None else int(dead.sum())
        k_aux = min(self.cfg.k_aux_eff, n_dead) if self.cfg.aux_coefficient > 0 else 0
        vals, idx, aux_vals, aux_idx = sp.topk_encode(
            self._code_input(x_n), self.encoder_rows(), self.b_enc, k, dead if k_aux else None, k_aux, sparse=sparse
        )
        x_hat = self._code_output(sp.decode(vals, idx, self.W_dec, self.b_dec, sparse=sparse))
        err = x_n - x_hat
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        aux = x_n.new_zeros(())
        if k_aux:
            e = err.detach()
            e_hat = self._code_output(
                sp.decode(aux_vals, aux_idx, self.W_dec, torch.zeros_like(self.b_dec), sparse=sparse)
            )
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

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.cfg.k_infer, "rescale_acts_by_decoder_norm": False}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, k={self.cfg.k}, normalize={self.cfg.normalize!r}, site={self.site!r}"
