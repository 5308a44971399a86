"""Building a TransformerLens model -- HookedTransformer or TransformerBridge -- from a config and weights.

Weights of mechwork's own models are stored in HookedTransformer's (unprocessed) layout. The bridge gets the
same weights renamed to its ``nn.Linear`` layout, then ``enable_compatibility_mode()`` applies the same
processing as ``HookedTransformer.load_and_process_state_dict`` so both backends give the same logits.
"""

from __future__ import annotations

import warnings
from typing import Any

import einops
import torch
from torch import Tensor

from ..core.errors import ConfigError

BACKENDS = ("auto", "hooked", "bridge")


def hooked_available() -> bool:
    """Whether this TransformerLens still ships ``HookedTransformer`` (removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "hooked" if hooked_available() else "bridge"
    if backend == "hooked" and not hooked_available():
        raise ConfigError(
            "backend='hooked' needs transformer-lens < 4 (HookedTransformer was removed); use backend='bridge'"
        )
    return backend


def hooked_to_bridge_state(sd: dict[str, Tensor], n_layers: int, attn_only: bool) -> dict[str, Tensor]:
    """Rename/reshape an unprocessed HookedTransformer state dict into a native TransformerBridge one."""
    out: dict[str, Tensor] = {"embed.weight": sd["embed.W_E"], "pos_embed.weight": sd["pos_embed.W_pos"]}
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        lns = ("ln1",) if attn_only else ("ln1", "ln2")
        for ln in lns:
            out[p + ln + ".weight"] = sd[p + ln + ".w"]
            out[p + ln + ".bias"] = sd[p + ln + ".b"]
        for x in "qkv":
            out[p + f"attn.{x}.weight"] = einops.rearrange(sd[p + f"attn.W_{x.upper()}"], "h d e -> (h e) d")
            out[p + f"attn.{x}.bias"] = sd[p + f"attn.b_{x.upper()}"].reshape(-1)
        out[p + "attn.o.weight"] = einops.rearrange(sd[p + "attn.W_O"], "h e d -> d (h e)")
        out[p + "attn.o.bias"] = sd[p + "attn.b_O"]
        if not attn_only:
            out[p + "mlp.in.weight"] = sd[p + "mlp.W_in"].T
            out[p + "mlp.in.bias"] = sd[p + "mlp.b_in"]
            out[p + "mlp.out.weight"] = sd[p + "mlp.W_out"].T
            out[p + "mlp.out.bias"] = sd[p + "mlp.b_out"]
    out["ln_final.weight"] = sd["ln_final.w"]
    out["ln_final.bias"] = sd["ln_final.b"]
    out["unembed.weight"] = sd["unembed.W_U"].T
    out["unembed.bias"] = sd["unembed.b_U"]
    return {k: v.contiguous() for k, v in out.items()}


def build_hooked(
    tl_cfg: dict[str, Any], state: dict[str, Tensor] | None, tokenizer: Any, *, processing: bool = True
) -> Any:
    """A HookedTransformer from a config dict and an unprocessed state dict (None: random init)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(HookedTransformerConfig(**tl_cfg), tokenizer=tokenizer, default_padding_side="right")
    if state is not None:
        if processing:
            model.load_and_process_state_dict(
                state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
            )
        else:
            model.load_state_dict({**model.state_dict(), **state}, strict=True)
    return model


def build_bridge(
    tl_cfg: dict[str, Any], state: dict[str, Tensor] | None, tokenizer: Any, *, processing: bool = True
) -> Any:
    """A native TransformerBridge with the same weights; compatibility mode when ``processing``."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in tl_cfg.items() if k not in ("default_prepend_bos",)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
        if state is not None:
            model.load_state_dict(
                hooked_to_bridge_state(state, tl_cfg["n_layers"], tl_cfg.get("attn_only", False)), strict=True
            )
        if processing:
            model.enable_compatibility_mode(disable_warnings=True)
    return model


def finalize(model: Any, *, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Move to device/dtype, switch to eval mode, and add the context-length guard."""
    model = _to(model, device)
    if dtype is not None:
        model = _to(model, dtype)
    model.eval()
    _add_context_guard(model)
    return model


def _to(model: Any, what: Any) -> Any:
    try:
        return model.to(what, print_details=False)  # HookedTransformer prints otherwise
    except TypeError:
        return model.to(what)


def _add_context_guard(model: Any) -> None:
    """Raise a clear DataError when a forward pass gets more positions than the model's context."""
    from ..core.errors import DataError

    embed = getattr(model, "embed", None)
    if embed is None or getattr(model, "_mechwork_guard", False):
        return
    n_ctx = int(model.cfg.n_ctx)

    def guard(module: Any, args: tuple) -> None:
        if (
            args
            and isinstance(args[0], Tensor)
            and args[0].ndim >= 2
            and args[0].shape[-1] > n_ctx
            and not args[0].is_floating_point()
        ):
            raise DataError(
                f"input has {args[0].shape[-1]} positions but the model's context is {n_ctx} tokens; "
                "shorten the prompt or split it into windows"
            )

    embed.register_forward_pre_hook(guard)
    model._mechwork_guard = True
