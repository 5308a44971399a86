"""SAE folders in SAELens's format, written atomically; mechwork loads its own and SAELens's folders.

A folder holds ``cfg.json`` (SAELens's fields at the top level, mechwork's config and provenance under
``"mechwork"``), ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``,
``b_dec``, ``norm_scale``) and optionally ``card.json`` (metrics). The architecture names are
``mechwork_topk`` / ``mechwork_relu`` (registered with SAELens by :mod:`mechwork.sae.saelens`); with
``portable=True`` the input scale is folded into the weights and the folder uses SAELens's own ``topk`` /
``standard`` names, so SAELens loads it without mechwork.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..core.config import _version
from ..core.devices import parse_device, parse_dtype
from ..core.errors import CheckpointError, ConfigError
from ..core.io import atomic_dir, atomic_write_json, load_tensors, read_json, save_tensors
from .config import SAEConfig
from .model import SAE, SAE_CLASSES

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
CARD = "card.json"
SAELENS_FALLBACK_VERSION = "6.54.12"
_SUPPORTED = ("mechwork_topk", "mechwork_relu", "topk", "standard", "jumprelu")


def _saelens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # pragma: no cover - SAELens not installed
        return SAELENS_FALLBACK_VERSION


def _folded(sae: SAE) -> dict[str, torch.Tensor]:
    """Weights with the constant input scale folded in (exact up to rounding): same f, same x_hat."""
    s = float(sae.norm_scale)
    return {"W_enc": (sae.W_enc_T * s).t(), "b_enc": sae.b_enc, "W_dec": sae.W_dec / s, "b_dec": sae.b_dec / s}


def save(sae: SAE, path: str | Path, *, card: dict[str, Any] | None = None, portable: bool = False) -> Path:
    """Write ``sae`` to the folder ``path`` (replaced atomically if it exists).

    Parameters
    ----------
    card : dict, optional
        Metrics and notes written to ``card.json``.
    portable : bool
        Fold the input scale into the weights and use SAELens's built-in architecture names, so that
        SAELens loads the folder without mechwork installed (mechwork then loads it as a SAELens folder).
    """
    cfg = sae.cfg
    if sae.jumprelu:
        arch = "jumprelu"
    elif portable:
        arch = "topk" if sae.activation == "topk" else "standard"
    else:
        arch = f"mechwork_{cfg.architecture}"
    tensors = (
        _folded(sae)
        if portable
        else {
            "W_enc": sae.W_enc,
            "b_enc": sae.b_enc,
            "W_dec": sae.W_dec,
            "b_dec": sae.b_dec,
            "norm_scale": sae.norm_scale,
        }
    )
    if sae.jumprelu:
        tensors["threshold"] = sae.threshold
    d: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "layer_norm" if cfg.normalize == "layer_norm" else "none",
        "reshape_activations": "hook_z"
        if len(sae.input_shape) == 2 and str(sae.site or "").endswith("hook_z")
        else "none",
    }
    if sae.activation == "topk":
        d.update(k=cfg.k_infer if portable else cfg.k, rescale_acts_by_decoder_norm=False)
        if not portable:
            d["alpha"] = cfg.alpha
    meta = sae.meta
    d["metadata"] = {
        "sae_lens_version": _saelens_version(),
        "sae_lens_training_version": None,
        "hook_name": meta.get("site"),
        "model_name": meta.get("model"),
        "context_size": meta.get("context_size"),
        "prepend_bos": meta.get("prepend_bos", True),
        "hook_head_index": None,
        "dataset_path": meta.get("store"),
        "training_architecture": f"mechwork_{cfg.architecture}",
        "training_architecture_details": cfg.to_dict(),
    }
    d["mechwork_version"] = _version()
    d["mechwork"] = {"config": cfg.to_dict(), "meta": meta, "portable": portable, "jumprelu": sae.jumprelu}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(tmp / WEIGHTS, {k: v.detach() for k, v in tensors.items()})
        atomic_write_json(tmp / CFG, d)
        if card is not None:
            atomic_write_json(tmp / CARD, card)
    return path


def read_card(path: str | Path) -> dict[str, Any] | None:
    """The folder's ``card.json`` (``None`` when absent)."""
    p = Path(path) / CARD
    return read_json(p, what="SAE card") if p.is_file() else None


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> SAE:
    """Load a mechwork SAE folder or a SAELens folder (``topk``, ``standard``, ``jumprelu``).

    Raises
    ------
    CheckpointError
        Missing, truncated or foreign files, unsupported architectures, tensors of the wrong shape (the
        message names the file and the field).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no SAE folder at {path}")
    raw = read_json(path / CFG, what="SAE config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path / CFG} is not a JSON object; not an SAE config")
    arch = raw.get("architecture", "standard")
    if arch not in _SUPPORTED and not (arch.startswith("mechwork_") and arch.removeprefix("mechwork_") in SAE_CLASSES):
        raise CheckpointError(
            f"{path / CFG}: architecture {arch!r} is not supported; mechwork loads {', '.join(_SUPPORTED)}"
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int) or raw[key] < 1:
            raise CheckpointError(f"{path / CFG}: field {key!r} must be a positive integer, found {raw.get(key)!r}")
    dev = parse_device(device) if device is not None else torch.device("cpu")
    dt = parse_dtype(dtype, default=torch.float32)
    weights = load_tensors(path / WEIGHTS)
    mw = raw.get("mechwork") if isinstance(raw.get("mechwork"), dict) else None
    if mw is not None and not mw.get("portable") and arch.startswith("mechwork_"):
        try:
            cfg = SAEConfig.from_dict(mw["config"], source=str(path / CFG))
        except (ConfigError, KeyError) as e:
            raise CheckpointError(f"{path / CFG}: the mechwork config is invalid ({e})") from e
        meta = dict(mw.get("meta") or {})
        jumprelu = False
    else:
        cfg, meta, jumprelu = _from_saelens(raw, path)
        if mw is not None:
            meta = {**meta, **(mw.get("meta") or {})}
    if (cfg.d_in, cfg.d_sae) != (raw["d_in"], raw["d_sae"]):
        raise CheckpointError(
            f"{path / CFG}: d_in/d_sae {raw['d_in']}/{raw['d_sae']} disagree with the mechwork config {cfg.d_in}/{cfg.d_sae}"
        )
    sae = SAE_CLASSES.get(cfg.architecture, SAE)(
        cfg, dtype=dt, meta=meta, jumprelu=jumprelu, apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True))
    )
    _fill(sae, weights, raw, path)
    return sae.to(dev)


def _from_saelens(raw: dict[str, Any], path: Path) -> tuple[SAEConfig, dict[str, Any], bool]:
    arch = raw["architecture"]
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", "layer_norm"):
        raise CheckpointError(
            f"{path / CFG}: normalize_activations={norm!r} is not supported (mechwork handles 'none' and 'layer_norm'; "
            "SAELens folds 'expected_average_only_in' into the weights when it saves)"
        )
    md = raw.get("metadata") or {}
    meta = {
        "model": md.get("model_name"),
        "site": md.get("hook_name"),
        "context_size": md.get("context_size"),
        "source": "saelens",
        "prepend_bos": md.get("prepend_bos", True),
    }
    base = dict(
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        normalize="layer_norm" if norm == "layer_norm" else "none",
        b_dec_init="zeros",
    )
    if arch in ("topk", "mechwork_topk"):
        k = raw.get("k")
        if not isinstance(k, int):
            raise CheckpointError(f"{path / CFG}: a topk SAE needs an integer 'k', found {k!r}")
        cfg = SAEConfig(architecture="topk", k=k, alpha=float(raw.get("alpha", 1.0)), **base)
    else:
        cfg = SAEConfig(architecture="relu", **base)
    return cfg, meta, arch == "jumprelu"


def _fill(sae: SAE, w: dict[str, torch.Tensor], raw: dict[str, Any], path: Path) -> None:
    d, m = sae.d_in, sae.d_sae
    expected = {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}
    if sae.jumprelu:
        expected["threshold"] = (m,)
    for name, shape in expected.items():
        if name not in w:
            raise CheckpointError(f"{path / WEIGHTS} has no tensor {name!r}; the file is truncated or foreign")
        if tuple(w[name].shape) != shape:
            raise CheckpointError(
                f"{path / WEIGHTS}: {name} has shape {tuple(w[name].shape)}, expected {shape} (d_in={d}, d_sae={m})"
            )
        if not torch.isfinite(w[name]).all():
            raise CheckpointError(f"{path / WEIGHTS}: {name} contains NaN or inf")
    W_enc, b_enc, W_dec = w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float()
    if raw.get("rescale_acts_by_decoder_norm"):
        # SAELens's topk with rescaling: fold the decoder norms in (same codes, same reconstruction)
        norms = W_dec.norm(dim=-1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    scale = w.get("norm_scale")
    if scale is not None and (scale.numel() != 1 or not math.isfinite(float(scale)) or float(scale) <= 0):
        raise CheckpointError(f"{path / WEIGHTS}: norm_scale must be one positive number, found {scale.tolist()}")
    with torch.no_grad():
        sae.W_enc_T.copy_(W_enc.t())
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(w["b_dec"])
        if scale is not None:
            sae.norm_scale.fill_(float(scale))
        if sae.jumprelu:
            sae.threshold.copy_(w["threshold"])
