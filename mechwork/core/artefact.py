"""Artefact folders: ``cfg.json`` (a config dataclass + mechwork version) + one ``.safetensors`` + optional
``card.json``, written atomically and read back with errors that name the file (DESIGN "Artefacts on disk")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch

from .config import Config, save_config
from .errors import CheckpointError
from .io import PathLike, atomic_dir, atomic_write_json, load_tensors, read_json, save_tensors

C = TypeVar("C", bound=Config)
CONFIG, CARD = "cfg.json", "card.json"


def save_artefact(
    path: PathLike,
    config: Config,
    tensors: dict[str, torch.Tensor],
    *,
    weights: str,
    metadata: dict[str, str] | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the folder ``path`` (``cfg.json``, ``weights``, ``card.json`` when ``card``) under a temporary name,
    renamed into place when complete."""
    with atomic_dir(path) as tmp:
        save_config(tmp / CONFIG, config)
        save_tensors(tmp / weights, tensors, metadata=metadata)
        if card:
            atomic_write_json(tmp / CARD, card)
    return Path(path)


def load_artefact(
    path: PathLike, config_cls: type[C], *, format: str, weights: str, what: str, device: str | torch.device = "cpu"
) -> tuple[C, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`save_artefact`: ``(config, tensors, card)``.

    ``cfg.json`` must carry ``"format": format``; a missing, truncated or foreign file raises
    :class:`CheckpointError` naming it (and the field, for config errors).
    """
    path = Path(path)
    raw = read_json(path / CONFIG, what=f"{what} config")
    if not isinstance(raw, dict) or raw.get("format") != format:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path / CONFIG} is not a mechwork {what} config (format {found!r}, expected {format!r})"
        )
    cfg = config_cls.from_dict(raw, ignore=("mechwork_version",), source=str(path / CONFIG))
    tensors = load_tensors(path / weights, device=device, what=f"{what} tensors", floating=True)
    card = read_json(path / CARD, what=f"{what} card") if (path / CARD).exists() else {}
    if not isinstance(card, dict):
        raise CheckpointError(f"{what} card {path / CARD} is not a JSON object")
    return cfg, tensors, card
