"""Configs of mechwork's own models and of their training runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.config import Config
from ..core.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig(Config):
    """Architecture of a mechwork-trained transformer (GPT-2 style, pre-LayerNorm, learned positions)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    d_mlp: int | None = None
    attn_only: bool = False
    act_fn: str = "gelu"
    normalization_type: str = "LN"
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"ModelConfig.{f} must be a positive integer, got {v!r}")
        if not self.attn_only and not self.d_mlp:
            raise ConfigError("ModelConfig.d_mlp is required unless attn_only=True")

    def tl_dict(self) -> dict[str, Any]:
        """The equivalent TransformerLens config dict (HookedTransformerConfig / boot_native)."""
        d: dict[str, Any] = dict(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            act_fn=self.act_fn,
            normalization_type=self.normalization_type,
            attn_only=self.attn_only,
            seed=self.seed,
            model_name=self.name,
            default_prepend_bos=True,
            positional_embedding_type="standard",
        )
        if not self.attn_only:
            d["d_mlp"] = self.d_mlp
        return d


@dataclass(frozen=True)
class TrainConfig(Config):
    """How a zoo model is trained on the generated corpus (AdamW, linear warm-up, cosine decay)."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    mix: dict[str, float] = field(default_factory=dict)
    doc_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int = 1
    log_every: int = 100
