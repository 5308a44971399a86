"""mechwork model folders: ``config.json`` + ``model.safetensors`` + ``tokenizer/`` (+ ``card.json``).

Weights are HookedTransformer's unprocessed layout, stored with safetensors; every file is written
atomically and the whole folder is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import CheckpointError, ConfigError
from ..core.io import PathLike, atomic_dir, atomic_write_json, load_tensors, read_json, save_tensors
from .config import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "mechwork-model"


def is_mechwork_folder(path: PathLike) -> bool:
    """Whether ``path`` is (or looks like a damaged) mechwork model folder rather than a Hugging Face one.

    A config without ``format`` is ours when it has no Hugging Face ``model_type``/``architectures`` (or the
    folder has our ``tokenizer/``): :func:`load_checkpoint` then reports what is missing, instead of the folder
    being handed to the Hugging Face loader.
    """
    p = Path(path)
    if not (p / CONFIG_FILE).exists() and not (p / CONFIG_FILE).is_symlink():
        return False
    try:
        raw = read_json(p / CONFIG_FILE, what="model config")
    except CheckpointError:
        return (p / TOKENIZER_DIR).is_dir() or not (p / WEIGHTS_FILE).exists()  # broken: let the loader say so
    if not isinstance(raw, dict):
        return True
    if "format" in raw:
        return raw["format"] == FORMAT
    return (p / TOKENIZER_DIR).is_dir() or not ("model_type" in raw or "architectures" in raw)


def save_checkpoint(
    path: PathLike, cfg: ModelConfig, state: dict[str, Tensor], *, card: dict[str, Any] | None = None
) -> Path:
    """Write a model folder atomically (config, weights, tokenizer, card)."""
    from .. import __version__
    from ..data.tokenizer import save_tokenizer

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(tmp / WEIGHTS_FILE, state, metadata={"format": FORMAT, "name": cfg.name})
        cfg.to_json(tmp / CONFIG_FILE, format=FORMAT, mechwork_version=__version__)
        save_tokenizer(tmp / TOKENIZER_DIR)
        if card is not None:
            atomic_write_json(tmp / CARD_FILE, {**card, "weights_digest": weights_digest(state)})
    return path


def weights_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors themselves (sorted names, dtype, shape, bytes).

    Unlike a hash of the file, it does not depend on how the safetensors header happens to be serialised, so
    two training runs that produce the same weights give the same digest.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_checkpoint(path: PathLike) -> tuple[ModelConfig, dict[str, Tensor], Any, dict[str, Any]]:
    """Read and validate a model folder: ``(config, state_dict, tokenizer, card)``.

    Raises :class:`CheckpointError` naming the file for a missing/truncated weights file, an invalid config,
    or weights whose names/shapes do not match the config.
    """
    from ..data.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model folder not found: {path}")
    raw = read_json(path / CONFIG_FILE, what="model config")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format", "<missing>") if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise CheckpointError(
            f"model config {path / CONFIG_FILE} is not a mechwork model config (format {found!r}, expected {FORMAT!r})"
        )
    try:
        cfg = ModelConfig.from_dict(raw, ignore=("format", "mechwork_version"), source=str(path / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(f"invalid model config {path / CONFIG_FILE}: {e}") from e
    state = load_tensors(path / WEIGHTS_FILE, what="model weights", floating=True)
    _check_state(cfg, state, path / WEIGHTS_FILE)
    tokenizer = load_tokenizer(path / TOKENIZER_DIR, required=("bos", "eos", "pad", "unk"))
    if len(tokenizer) > cfg.d_vocab:
        raise CheckpointError(
            f"tokenizer {path / TOKENIZER_DIR} has {len(tokenizer)} tokens but {path / CONFIG_FILE} says d_vocab={cfg.d_vocab}"
        )
    card = read_json(path / CARD_FILE, what="model card") if (path / CARD_FILE).exists() else {}
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {path / CARD_FILE} is not a JSON object")
    return cfg, state, tokenizer, card


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    D, H, E, V, C = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_ctx
    shapes: dict[str, tuple[int, ...]] = {
        "embed.W_E": (V, D),
        "pos_embed.W_pos": (C, D),
        "unembed.W_U": (D, V),
        "unembed.b_U": (V,),
        "ln_final.w": (D,),
        "ln_final.b": (D,),
    }
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        for x in "QKV":
            shapes[p + f"attn.W_{x}"] = (H, D, E)
            shapes[p + f"attn.b_{x}"] = (H, E)
        shapes[p + "attn.W_O"] = (H, E, D)
        shapes[p + "attn.b_O"] = (D,)
        shapes[p + "ln1.w"] = (D,)
        shapes[p + "ln1.b"] = (D,)
        if not cfg.attn_only:
            M = int(cfg.d_mlp or 0)
            shapes.update(
                {
                    p + "ln2.w": (D,),
                    p + "ln2.b": (D,),
                    p + "mlp.W_in": (D, M),
                    p + "mlp.b_in": (M,),
                    p + "mlp.W_out": (M, D),
                    p + "mlp.b_out": (D,),
                }
            )
    return shapes


def _check_state(cfg: ModelConfig, state: dict[str, Tensor], file: Path) -> None:
    want = expected_shapes(cfg)
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{file} does not match its config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    bad = [f"{k}: {got[k]} != {want[k]}" for k in want if got[k] != want[k]]
    if bad:
        raise CheckpointError(f"{file}: tensor shapes do not match config: {'; '.join(bad[:5])}")
