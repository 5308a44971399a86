"""ReLU + L1 SAE (the classic baseline) and JumpReLU (inference only, for SAELens folders).

ReLU: ``f = relu((x - b_dec) W_enc + b_enc)``, loss = batch FVU + ``l1_coefficient * mean_token sum_j f_j`` in
units of the RMS input norm (decoder rows have unit norm), with a linear L1 warm-up. Exported as SAELens's
``standard``. JumpReLU (``f = relu(pre) * (pre > threshold)``) is built when a SAELens ``jumprelu`` folder is
loaded and is saved back as ``jumprelu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError
from .base import SAE, StepOutput
from .config import SAEConfig


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    """A ReLU + L1 SAE (see :class:`~mechwork.sae.SAEConfig` for the shared fields).

    Parameters
    ----------
    l1_coefficient : float
        Weight of ``sum_j f_j`` (decoder rows have unit norm) on a variance-normalised MSE.
    l1_warmup : float
        Fraction of training over which the L1 weight rises linearly from 0.
    """

    architecture: str = "relu"
    l1_coefficient: float = 1.0
    l1_warmup: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.l1_warmup <= 1.0:
            raise ConfigError("l1_warmup is a fraction of training between 0 and 1")
        if self.l1_coefficient < 0:
            raise ConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")

    @property
    def sparsity_label(self) -> str:
        return f"l1-{self.l1_coefficient:g}"


class ReLUSAE(SAE):
    """ReLU + L1 sparse autoencoder."""

    activation: ClassVar[str] = "relu"
    saelens_name: ClassVar[str | None] = "standard"
    cfg: ReLUConfig

    def _activate(self, pre: Tensor, k: int | None) -> Tensor:
        return pre.relu()

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
        x_n, total_var = self._normalized_batch(x)
        f = self.pre_acts(x_n).relu()
        x_hat = f @ self.W_dec + self.b_dec
        fvu = (x_n - x_hat).pow(2).sum() / total_var
        rms = (total_var / x_n.shape[0]).sqrt()
        warm = max(1, int(self.cfg.l1_warmup * total_steps))
        coef = self.cfg.l1_coefficient * min(1.0, (step + 1) / warm)
        l1 = f.sum(-1).mean() / rms
        active = f > 0
        return StepOutput(
            fvu + coef * l1,
            fvu.detach(),
            active.sum(-1).float().mean(),
            x_n.new_zeros(()),
            active.any(0),
            x_hat if keep else None,
        )


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE read from a SAELens folder (inference only; the thresholds are weights)."""

    architecture: str = "jumprelu"

    @property
    def sparsity_label(self) -> str:
        return "threshold"


class JumpReLUSAE(SAE):
    """``f = relu(pre) * (pre > threshold)`` (Rajamanoharan et al.), as SAELens's ``jumprelu``."""

    activation: ClassVar[str] = "jumprelu"
    saelens_name: ClassVar[str | None] = "jumprelu"
    cfg: JumpReLUConfig

    def init_parameters(self, *, device: Any, dtype: torch.dtype) -> None:
        super().init_parameters(device=device, dtype=dtype)
        self.register_buffer("threshold", torch.zeros(self.cfg.d_sae, dtype=dtype, device=device))

    def _activate(self, pre: Tensor, k: int | None) -> Tensor:
        return pre.relu() * (pre > self.threshold)
