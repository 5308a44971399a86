"""Training checkpoints: SAE weights, Adam state and dead-latent counters as safetensors, the rest as JSON.

A checkpoint is one folder written with ``atomic_dir`` (a crash leaves the previous checkpoint intact):
``trainer.json`` (step, tokens, the run's config, the SAE names) and ``state.safetensors`` with, per SAE
``<name>/<param>``, ``<name>/adam/<param>/{exp_avg, exp_avg_sq, step}`` and ``<name>/tokens_since_fired``.
Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.config import _version
from ..core.errors import CheckpointError, ConfigError
from ..core.io import atomic_dir, atomic_write_json, load_tensors, read_json, save_tensors
from .config import TrainConfig

STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
# fields that may change between an interrupted run and its resumption without changing the result
RESUMABLE_FIELDS = {"out", "checkpoint_every", "log_every", "wandb_project", "device"}


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    tokens: int,
    cfg: TrainConfig,
    saes: list,
    optimizer: torch.optim.Optimizer,
    since_fired: list[torch.Tensor],
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the full training state after ``step`` steps (``extra``: further named tensors of the run)."""
    tensors: dict[str, torch.Tensor] = dict(extra or {})
    for sae, fired in zip(saes, since_fired):
        name = sae.cfg.label
        for pname, t in list(sae.named_parameters()) + list(sae.named_buffers()):
            tensors[f"{name}/{pname}"] = t
        for pname, p in sae.named_parameters():
            for key, val in optimizer.state.get(p, {}).items():
                tensors[f"{name}/adam/{pname}/{key}"] = val if val.ndim else val.reshape(1)
        tensors[f"{name}/tokens_since_fired"] = fired
    with atomic_dir(path) as tmp:
        save_tensors(tmp / STATE_FILE, tensors)
        atomic_write_json(
            tmp / TRAINER_FILE,
            {
                "step": step,
                "tokens": tokens,
                "saes": [s.cfg.label for s in saes],
                "mechwork_version": _version(),
                "config": cfg.to_dict(),
            },
        )
    return Path(path)


def read_trainer_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    meta = read_json(path / TRAINER_FILE, what="trainer state")
    for key in ("step", "tokens", "saes", "config"):
        if key not in meta:
            raise CheckpointError(f"{path / TRAINER_FILE} has no {key!r} field; the checkpoint is truncated or foreign")
    return meta


def check_same_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    """Refuse to resume with a config that would change the result; name the differing fields."""
    try:
        old = TrainConfig.from_dict(saved, source=str(where))
    except ConfigError as e:
        raise CheckpointError(f"cannot read the config stored in {where}: {e}") from e
    diff = {k: v for k, v in old.diff(cfg).items() if k not in RESUMABLE_FIELDS}
    if "saes" in diff and len(old.saes) == len(cfg.saes):  # name the SAE fields, not the whole tuple
        del diff["saes"]
        for i, (a, b) in enumerate(zip(old.saes, cfg.saes)):
            da, db = a.to_dict(), b.to_dict()
            for k in sorted(set(da) | set(db)):
                if da.get(k) != db.get(k):
                    diff[f"saes[{i}].{k}"] = (da.get(k, "(absent)"), db.get(k, "(absent)"))
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"refusing to resume from {where}: the config differs in {lines}. "
            "Resume with the original config, or start a new run in another folder."
        )


def load_checkpoint(
    path: str | Path,
    *,
    cfg: TrainConfig,
    saes: list,
    optimizer: torch.optim.Optimizer,
    since_fired: list[torch.Tensor],
    extra: dict[str, torch.Tensor] | None = None,
) -> tuple[int, int]:
    """Restore the state written by :func:`save_checkpoint` in place (``extra`` tensors too); returns ``(step, tokens)``."""
    path = Path(path)
    meta = read_trainer_json(path)
    check_same_config(meta["config"], cfg, path)
    labels = [s.cfg.label for s in saes]
    if meta["saes"] != labels:
        raise CheckpointError(f"{path} holds SAEs {meta['saes']}, the run trains {labels}")
    state = load_tensors(path / STATE_FILE)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    pos = {id(p): i for i, p in enumerate(flat)}
    for sae, fired in zip(saes, since_fired):
        name = sae.cfg.label
        with torch.no_grad():
            for pname, t in list(sae.named_parameters()) + list(sae.named_buffers()):
                src = _need(state, f"{name}/{pname}", path)
                if src.shape != t.shape:
                    raise CheckpointError(
                        f"{path / STATE_FILE}: {name}/{pname} has shape {tuple(src.shape)}, expected {tuple(t.shape)}"
                    )
                t.copy_(src)
            fired.copy_(_need(state, f"{name}/tokens_since_fired", path))
        for pname, p in sae.named_parameters():
            keys = [k for k in state if k.startswith(f"{name}/adam/{pname}/")]
            if keys:
                st = {k.rsplit("/", 1)[1]: state[k].to(p.device) for k in keys}
                if "step" in st:
                    st["step"] = st["step"].reshape(())
                opt_state[pos[id(p)]] = st
    for key, t in (extra or {}).items():
        src = _need(state, key, path)
        if src.shape != t.shape:
            raise CheckpointError(f"{path / STATE_FILE}: {key} has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
        t.copy_(src)
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)
    return int(meta["step"]), int(meta["tokens"])


def _need(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{path / STATE_FILE} has no tensor {key!r}; the checkpoint is truncated or foreign")
    return state[key]
