"""Configs of mechwork's own models and of their training runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..core.config import Config, check_limits
from ..core.errors import ConfigError

#: activation functions TransformerLens implements
ACT_FNS = ("relu", "gelu", "silu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "solu_ln", "quick_gelu")


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
    normalization_type: Literal["LN", "LNPre", "RMS", "RMSPre"] | None = "LN"
    seed: int = 0

    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "n_layers": (1, 1024),
        "d_model": (1, 1 << 16),
        "n_heads": (1, 1024),
        "d_head": (1, 1 << 12),
        "n_ctx": (1, 1 << 20),
        "d_vocab": (1, 1 << 22),
        "d_mlp": (1, 1 << 18),
        "seed": (0, (1 << 32) - 1),
    }

    def __post_init__(self) -> None:
        check_limits(type(self), {f: getattr(self, f) for f in self.LIMITS})
        if self.act_fn not in ACT_FNS:
            raise ConfigError(f"ModelConfig.act_fn must be one of {', '.join(ACT_FNS)}; got {self.act_fn!r}")
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
