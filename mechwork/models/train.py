"""Training mechwork's zoo models from scratch, deterministically (one thread, fixed seeds)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..data.corpus import Corpus
from .backends import build_hooked
from .checkpoint import save_checkpoint
from .config import ModelConfig, TrainConfig
from .zoo import ENTRIES, ZooEntry


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_frac * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a HookedTransformer on the generated corpus; returns ``(model, history)``."""
    from ..data.tokenizer import get_tokenizer

    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    model = build_hooked(model_cfg.tl_dict(), None, get_tokenizer())
    model.train()
    corpus = Corpus(
        seed=train_cfg.seed, mix=train_cfg.mix or None, split="train", options=train_cfg.doc_options or None
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_cfg.lr,
        betas=(0.9, 0.98),
    )
    history: list[dict[str, float]] = []
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_cfg.steps, desc=f"train {model_cfg.name}", file=sys.stderr)
    running = 0.0
    n_tokens = 0
    for step in range(train_cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train_cfg)
        tokens, mask = corpus.batch(train_cfg.batch_size, model_cfg.n_ctx)
        n_tokens += int(mask.sum())
        logits = model(tokens, return_type="logits")
        loss = F.cross_entropy(logits[:, :-1][mask[:, :-1]], tokens[:, 1:][mask[:, :-1]])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % train_cfg.log_every == 0 or step + 1 == train_cfg.steps:
            history.append({"step": step + 1, "loss": running, "seconds": time.time() - t0})
            if log:
                log(f"step {step + 1}: loss {running:.4f} ({time.time() - t0:.0f}s)")
    if bar is not None:
        bar.close()
    model.eval()
    return model, {"history": history, "wall_seconds": time.time() - t0, "final_loss": running, "tokens": n_tokens}


def unprocessed_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}


def train_zoo(name: str, *, out: str | Path | None = None, steps: int | None = None, progress: bool = True) -> Path:
    """Train zoo model ``name`` from scratch and write its folder (default: into the package's zoo)."""
    from .. import __version__

    if name not in ENTRIES:
        raise ConfigError(f"unknown zoo model {name!r}; known: {', '.join(ENTRIES)}")
    entry: ZooEntry = ENTRIES[name]
    tcfg = entry.train if steps is None else entry.train.replace(steps=steps)
    model, hist = train_model(entry.model, tcfg, progress=progress)
    card = {
        "name": name,
        "description": entry.description,
        "training_command": f"mechwork zoo train {name}" + (f" --steps {steps}" if steps is not None else ""),
        "seed": tcfg.seed,
        "steps": tcfg.steps,
        "tokens_seen": hist["tokens"],
        "wall_seconds": round(hist["wall_seconds"], 1),
        "threads": tcfg.threads,
        "torch_version": torch.__version__,
        "mechwork_version": __version__,
        "train_config": tcfg.to_dict(),
        "final_train_loss": round(hist["final_loss"], 4),
        "loss_history": hist["history"],
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    target = Path(out) if out is not None else entry.path
    save_checkpoint(target, entry.model, unprocessed_state(model), card=card)
    update_card_metrics(target)
    return target


def update_card_metrics(folder: str | Path) -> dict[str, Any]:
    """Re-measure a model folder's quality (with the processed, evaluation-time model) and store it in card.json."""
    from ..core.io import atomic_write_json, read_json
    from .checkpoint import CARD_FILE
    from .load import load_model
    from .quality import model_quality

    folder = Path(folder)
    model = load_model(folder, device="cpu")
    metrics = model_quality(model)
    card = read_json(folder / CARD_FILE, what="model card")
    card["metrics"] = metrics
    atomic_write_json(folder / CARD_FILE, card)
    return metrics
