"""SAE folders in SAELens's format, written atomically; mechwork loads its own and SAELens's folders.

A folder holds ``cfg.json`` (SAELens's fields at the top level, mechwork's config and provenance under
``"mechwork"``), ``sae_weights.safetensors`` and optionally ``card.json`` (metrics).

Portable by default: an SAE whose architecture SAELens has (TopK, ReLU, JumpReLU; MFR SAEs are TopK) is
written under SAELens's **own** name (``topk``, ``standard``, ``jumprelu``) with SAELens's tensors
(``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``), the constant input scale folded
into them and ``k = round(alpha * k)``: plain ``sae_lens.SAE.load_from_disk(path)`` loads it, with mechwork
not even installed, and encodes identically. mechwork reads its exact config (``k``, ``alpha``, the k
schedule ...) back from the ``"mechwork"`` section. Only mechwork-specific architectures (the SAE neural
operators) are written under a registered name, ``"mechwork_<arch> (import mechwork.sae.saelens)"``: SAELens
without mechwork then fails with ``KeyError`` quoting that name, which says which import registers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..core.config import Config, _version
from ..core.devices import parse_device, parse_dtype
from ..core.errors import CheckpointError, ConfigError
from ..core.io import atomic_dir, atomic_write_json, load_tensors, read_json, save_tensors
from . import registry
from .base import SAE
from .config import SAEConfig

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
CARD = "card.json"
FORMAT = 2  # the "mechwork" section's layout; 1 (absent) = mechwork <= 0.1 folders
SAELENS_FALLBACK_VERSION = "6.54.12"
REGISTER_HINT = " (import mechwork.sae.saelens)"
_SAELENS_NAMES = ("topk", "standard", "jumprelu")
_LEGACY = ("mechwork_topk", "mechwork_relu")


def saelens_architecture(sae: SAE, *, portable: bool = True) -> str:
    """The ``architecture`` written to ``cfg.json`` for ``sae`` (see the module docstring)."""
    if portable and sae.saelens_name is not None:
        return sae.saelens_name
    return f"mechwork_{sae.architecture}{REGISTER_HINT}"


def mechwork_name(saelens_arch: str) -> str | None:
    """The mechwork architecture behind a registered SAELens name (``None`` for SAELens's own names)."""
    if saelens_arch.startswith("mechwork_"):
        return saelens_arch.removeprefix("mechwork_").removesuffix(REGISTER_HINT)
    return None


def _saelens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # pragma: no cover - SAELens not installed
        return SAELENS_FALLBACK_VERSION


def saelens_note(sae: SAE, *, portable: bool = True) -> dict[str, Any]:
    """What a card says about SAELens: the architecture name and whether SAELens alone loads the folder."""
    arch = saelens_architecture(sae, portable=portable)
    alone = mechwork_name(arch) is None
    return {
        "architecture": arch,
        "loads_without_mechwork": alone,
        "how": "sae_lens.SAE.load_from_disk(path)"
        if alone
        else "import mechwork.sae.saelens, then sae_lens.SAE.load_from_disk(path)",
    }


def save(sae: SAE, path: str | Path, *, card: dict[str, Any] | None = None, portable: bool = True) -> Path:
    """Write ``sae`` to the folder ``path`` (replaced atomically if it exists).

    Parameters
    ----------
    card : dict, optional
        Metrics and notes written to ``card.json``.
    portable : bool
        ``True`` (default): SAELens's own architecture name where SAELens has the architecture (see the module
        docstring). ``False``: the registered ``mechwork_<arch>`` name (SAELens then needs
        ``import mechwork.sae.saelens``).
    """
    cfg = sae.cfg
    arch = saelens_architecture(sae, portable=portable)
    tensors = sae.export_tensors()
    d: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "layer_norm" if cfg.normalize == "layer_norm" else "none",
        "reshape_activations": "hook_z"
        if len(sae.input_shape) == 2 and str(sae.site or "").endswith("hook_z")
        else "none",
        **sae.saelens_fields(),
    }
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
    d["mechwork"] = {
        "format": FORMAT,
        "architecture": cfg.architecture,
        "config": cfg.to_dict(),
        "meta": meta,
        "saelens": saelens_note(sae, portable=portable),
    }
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(tmp / WEIGHTS, {k: v.detach().contiguous() for k, v in tensors.items()})
        atomic_write_json(tmp / CFG, d)
        if card is not None:
            atomic_write_json(tmp / CARD, card)
    return path


@dataclass(frozen=True)
class SAEFolderConfig(Config):
    """The top-level ``cfg.json`` fields mechwork reads (SAELens's names); others are left to SAELens.

    Declared once, so every type and range is checked with the file and field named before anything is built.
    """

    architecture: str = "standard"
    d_in: int = 0
    d_sae: int = 0
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    normalize_activations: str | None = "none"
    k: int | None = None
    alpha: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)
    mechwork: dict[str, Any] | None = None

    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {"d_in": (1, 1 << 20), "d_sae": (1, 1 << 26), "k": (1, 1 << 26)}


def read_folder_config(path: Path) -> dict[str, Any]:
    """``cfg.json`` of an SAE folder, validated by :class:`SAEFolderConfig` (CheckpointError naming the field)."""
    raw = read_json(path / CFG, what="SAE config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path / CFG} is not a JSON object; not an SAE config")
    known = {f.name for f in fields(SAEFolderConfig)}
    try:
        SAEFolderConfig.from_dict({k: v for k, v in raw.items() if k in known}, source=str(path / CFG))
    except ConfigError as e:
        raise CheckpointError(f"invalid SAE config: {e}") from e
    mw = raw.get("mechwork")
    for key in ("config", "meta"):
        if isinstance(mw, dict) and key in mw and not isinstance(mw[key], dict):
            raise CheckpointError(f"{path / CFG}: field 'mechwork.{key}' must be a JSON object")
    return raw


def read_card(path: str | Path) -> dict[str, Any] | None:
    """The folder's ``card.json`` (``None`` when absent)."""
    p = Path(path) / CARD
    return read_json(p, what="SAE card") if p.is_file() else None


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    architecture: str | None = None,
) -> SAE:
    """Load a mechwork SAE folder or a SAELens folder (``topk``, ``standard``, ``jumprelu``).

    Parameters
    ----------
    architecture : str, optional
        The architecture you expect; a folder of another one is refused (naming both).

    Raises
    ------
    CheckpointError
        Missing, truncated or foreign files, unsupported architectures, tensors of the wrong shape (the
        message names the file and the field).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no SAE folder at {path}")
    raw = read_folder_config(path)
    arch = raw.get("architecture", "standard")
    mw_arch = mechwork_name(arch) if isinstance(arch, str) else None
    if not isinstance(arch, str) or (arch not in _SAELENS_NAMES and mw_arch not in registry.names()):
        known = ", ".join([*_SAELENS_NAMES, *(f"mechwork_{n}" for n in registry.names())])
        raise CheckpointError(f"{path / CFG}: architecture {arch!r} is not supported; mechwork loads {known}")
    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int) or raw[key] < 1:
            raise CheckpointError(f"{path / CFG}: field {key!r} must be a positive integer, found {raw.get(key)!r}")
    dev = parse_device(device) if device is not None else torch.device("cpu")
    dt = parse_dtype(dtype, default=torch.float32)
    weights = load_tensors(path / WEIGHTS, what="SAE weights", floating=True)
    mw = raw.get("mechwork") if isinstance(raw.get("mechwork"), dict) else None
    legacy_portable = mw is not None and "format" not in mw and mw.get("portable")
    if mw is not None and "config" in mw and not legacy_portable and (mw.get("format") or mw_arch is not None):
        try:
            cfg = SAEConfig.from_dict(mw["config"], source=str(path / CFG))
        except ConfigError as e:
            raise CheckpointError(f"{path / CFG}: the mechwork config is invalid ({e})") from e
        meta = dict(mw.get("meta") or {})
    else:
        cfg, meta = _from_saelens(raw, path)
        if mw is not None:
            meta = {**meta, **(mw.get("meta") or {})}
    if (cfg.d_in, cfg.d_sae) != (raw["d_in"], raw["d_sae"]):
        raise CheckpointError(
            f"{path / CFG}: d_in/d_sae {raw['d_in']}/{raw['d_sae']} disagree with the mechwork config {cfg.d_in}/{cfg.d_sae}"
        )
    if architecture is not None and cfg.architecture != architecture:
        raise CheckpointError(
            f"{path} holds a {cfg.architecture!r} SAE, not {architecture!r} (cfg.json architecture {arch!r})"
        )
    sae = SAE(cfg, dtype=dt, meta=meta, apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)))
    sae.import_tensors(weights, raw, path / WEIGHTS)
    return sae.to(dev)


def _from_saelens(raw: dict[str, Any], path: Path) -> tuple[SAEConfig, dict[str, Any]]:
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
        return SAEConfig(architecture="topk", k=k, alpha=float(raw.get("alpha", 1.0)), **base), meta
    if arch == "jumprelu":
        return SAEConfig(architecture="jumprelu", **base), meta
    if arch in ("standard", "mechwork_relu"):
        return SAEConfig(architecture="relu", **base), meta
    raise CheckpointError(
        f"{path / CFG}: architecture {arch!r} needs the 'mechwork' section of cfg.json, which is missing"
    )
