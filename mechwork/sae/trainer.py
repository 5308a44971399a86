"""``mechwork.sae.train``: one or several SAEs trained in one pass over the same batches.

Each step draws one batch, computes every SAE's loss (plus an optional joint loss over all of them, the hook
that mutual-feature regularisation uses), back-propagates the sum once, then per SAE projects the decoder
gradient, clips the gradient norm and renormalises the decoder after one fused Adam step. SAEs never share
parameters and clipping is per SAE, so a sweep gives the same SAEs as separate runs on the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.config import save_config
from ..core.devices import parse_device
from ..core.errors import CheckpointError, ConfigError, NonFiniteError, ShapeError
from .activations import make_source, total_steps
from .base import SAE, StepOutput
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig

JointLoss = Callable[[list[SAE], list[StepOutput], Tensor], Tensor]
N_INIT = 32768


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    saes : list of SAE
        The trained SAEs, in the order of ``config.saes``.
    history : list of dict
        One record per SAE per logging step (``step, tokens, sae, loss, fvu, l0, aux, dead_fraction, k, lr``).
    out : Path or None
        The run folder (``saes/<name>/`` holds each SAE in the SAELens folder format).
    """

    saes: list[SAE]
    config: TrainConfig
    steps: int
    tokens: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    stopped_early: bool = False

    def __repr__(self) -> str:
        names = ", ".join(s.cfg.label for s in self.saes[:4]) + (" ..." if len(self.saes) > 4 else "")
        return f"TrainResult({len(self.saes)} SAE(s): {names}; {self.steps} steps, {self.tokens:,} tokens)"

    def _repr_html_(self) -> str:
        from ..viz.cards import train_result_card

        return train_result_card(self)

    @property
    def sae(self) -> SAE:
        """The only SAE of a single-SAE run."""
        if len(self.saes) != 1:
            raise ConfigError(f"this run trained {len(self.saes)} SAEs; index the result by name: {self.names}")
        return self.saes[0]

    @property
    def names(self) -> list[str]:
        return [s.cfg.label for s in self.saes]

    def __getitem__(self, name: str | int) -> SAE:
        if isinstance(name, int):
            return self.saes[name]
        for s in self.saes:
            if s.cfg.label == name:
                return s
        raise KeyError(f"no SAE named {name!r}; trained: {self.names}")

    def final_metrics(self) -> dict[str, dict[str, Any]]:
        """The last logged record of each SAE."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.history:
            out[rec["sae"]] = rec
        return out


def _as_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        return TrainConfig.from_json(str(config), ignore=("mechwork_version",))
    raise ConfigError(f"config must be a TrainConfig, a dict or a JSON path, got {type(config).__name__}")


def _fill_d_in(cfg: TrainConfig, shape: tuple[int, ...], where: str) -> TrainConfig:
    d_in = math.prod(shape)
    saes = []
    for s in cfg.saes:
        if s.d_in is not None and s.d_in != d_in:
            raise ShapeError(
                f"SAE {s.label!r} is configured for d_in={s.d_in} but the data ({where}) has width {d_in} "
                f"(per-token shape {shape})"
            )
        if s.input_shape is not None and tuple(s.input_shape) != shape:
            raise ShapeError(
                f"SAE {s.label!r} expects per-token shape {tuple(s.input_shape)}, the data ({where}) has {shape}"
            )
        saes.append(s.replace(d_in=d_in, input_shape=shape if len(shape) > 1 else None))
    return cfg.replace(saes=tuple(saes))


class _Run:
    """The mutable state of one training run (kept out of the public API)."""

    def __init__(
        self,
        cfg: TrainConfig,
        saes: list[SAE],
        source: Any,
        steps: int,
        device: torch.device,
        joint_loss: JointLoss | None,
    ) -> None:
        self.cfg, self.saes, self.source, self.steps, self.device = cfg, saes, source, steps, device
        self.joint_loss = joint_loss
        groups = [{"params": list(s.parameters()), "lr": cfg.lr_for(s.cfg), "base_lr": cfg.lr_for(s.cfg)} for s in saes]
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(groups, betas=cfg.betas, eps=cfg.eps, fused=fused)
        self.since_fired = [torch.zeros(s.d_sae, dtype=torch.long, device=device) for s in saes]
        self.step, self.tokens = 0, 0
        self.history: list[dict[str, Any]] = []
        # running sums since the last log record, per SAE: loss, fvu, l0, aux, steps (saved in checkpoints)
        self.acc = torch.zeros(len(saes), 5, dtype=torch.float64, device=device)
        self.last_checkpoint: Path | None = None
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if cfg.autocast and device.type == "cuda"
            else contextlib.nullcontext()
        )

    @property
    def out(self) -> Path | None:
        return Path(self.cfg.out) if self.cfg.out else None

    def joint_state(self) -> dict[str, Tensor]:
        """Tensors of the joint loss saved in checkpoints (e.g. MFR's cached assignments)."""
        fn = getattr(self.joint_loss, "state", None)
        return fn(self.saes) if fn is not None else {}

    def card_extra(self, sae: SAE) -> dict[str, Any]:
        """Extra card entries of one SAE (the joint loss's, e.g. an MFR run's partners)."""
        fn = getattr(self.joint_loss, "card", None)
        return fn(self.saes, sae) if fn is not None else {}

    def dead_masks(self) -> list[Tensor]:
        return [f >= s.cfg.dead_tokens for s, f in zip(self.saes, self.since_fired)]

    def one_step(self, x: Tensor) -> list[StepOutput]:
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()[:5].tolist()
            raise NonFiniteError(
                self._nan_msg(f"the activations of batch {self.step} contain NaN/inf (rows {bad} of the batch)")
            )
        begin = getattr(self.joint_loss, "begin_step", None)
        if begin is not None:
            begin(self.saes, self.step, self.steps)
        factor = self.cfg.lr_factor(self.step, self.steps)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        with self.autocast:
            outs = [
                s.training_loss(
                    x,
                    step=self.step,
                    total_steps=self.steps,
                    dead=d,
                    sparse=self.cfg.sparse,
                    keep=self.joint_loss is not None,
                )
                for s, d in zip(self.saes, self.dead_masks())
            ]
            total = sum(o.loss for o in outs)
            if self.joint_loss is not None:
                total = total + self.joint_loss(self.saes, outs, x)
        if not torch.isfinite(total):
            which = [s.cfg.label for s, o in zip(self.saes, outs) if not torch.isfinite(o.loss)] or ["the joint loss"]
            raise NonFiniteError(
                self._nan_msg(
                    f"the loss became NaN/inf at step {self.step} (SAE {', '.join(which)}); "
                    "lower the learning rate or check the activations' scale"
                )
            )
        total.backward()
        for s in self.saes:
            s.remove_parallel_grad()
            if self.cfg.grad_clip is not None:
                # the hand-rolled _foreach_norm clip this replaced skipped the scaling on CPU when under the
                # threshold: 3 ms vs 13 ms at d_in 512 x d_sae 16384, next to 2.8 s for the encoder matmul of a
                # batch (benchmarks/plumbing_bench.py): not worth a private API
                torch.nn.utils.clip_grad_norm_(s.parameters(), self.cfg.grad_clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        n = x.shape[0]
        for i, (s, o, f) in enumerate(zip(self.saes, outs, self.since_fired)):
            s.normalize_decoder()
            f += n
            f[o.fired] = 0
            self.acc[i] += torch.stack([o.loss.detach(), o.fvu, o.l0, o.aux, torch.ones_like(o.fvu)]).double()
        self.step += 1
        self.tokens += n
        return outs

    def _nan_msg(self, what: str) -> str:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written yet"
        )
        return f"training stopped: {what}. The SAEs were not updated with this batch; {where}."

    def record(self) -> list[dict[str, Any]]:
        """Turn the running sums into one record per SAE (averages since the last record) and reset them."""
        recs = []
        lr_factor = self.cfg.lr_factor(self.step - 1, self.steps)
        sums = self.acc.cpu()
        for i, s in enumerate(self.saes):
            loss, fvu, l0, aux, n = (float(v) for v in sums[i])
            n = max(n, 1.0)
            dead = float((self.since_fired[i] >= s.cfg.dead_tokens).float().mean())
            recs.append(
                {
                    "step": self.step,
                    "tokens": self.tokens,
                    "sae": s.cfg.label,
                    "loss": loss / n,
                    "fvu": fvu / n,
                    "l0": l0 / n,
                    "aux": aux / n,
                    "dead_fraction": dead,
                    "k": s.cfg.k_at(self.step - 1, self.steps) if s.activation == "topk" else None,
                    "lr": self.opt.param_groups[i]["base_lr"] * lr_factor,
                }
            )
        self.acc.zero_()
        self.history += recs
        return recs

    def checkpoint(self) -> None:
        assert self.out is not None
        self.last_checkpoint = save_checkpoint(
            self.out / "checkpoint",
            step=self.step,
            tokens=self.tokens,
            cfg=self.cfg,
            saes=self.saes,
            optimizer=self.opt,
            since_fired=self.since_fired,
            extra={"run/metric_sums": self.acc, **self.joint_state()},
        )


def train(
    config: TrainConfig | dict | str | Path,
    activations: Tensor | Iterable[Tensor] | Any | None = None,
    *,
    model: Any = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    progress: bool = True,
    joint_loss: JointLoss | None = None,
    source: Any = None,
    callback: Callable[[int, list[SAE]], None] | None = None,
) -> TrainResult:
    """Train the SAEs of ``config`` on the same activations.

    Parameters
    ----------
    config : TrainConfig, dict or path to a JSON file
    activations : Tensor [n_tokens, d], ActivationStore, or iterable of [batch, d] tensors, optional
        Activations given directly (instead of ``config.store`` / ``config.model``).
    model : HookedTransformer or TransformerBridge, optional
        An already loaded model to stream from (``config.site`` names the site).
    resume : bool
        Continue from ``<out>/checkpoint``; the config must match the checkpoint's (fields that do not affect
        the result, such as ``out`` or ``log_every``, may differ). The result equals an uninterrupted run.
    stop_at_step : int, optional
        Stop after this step and write a checkpoint (a time-sliced run; resume later).
    progress : bool
        Show a progress bar with loss, L0, dead fraction and FVU.
    source : optional
        Streaming from ``model``: any token source (texts, a file path, a task, token tensors, a generator); it
        overrides ``config.source``. See :mod:`mechwork.data.sources`.
    joint_loss : callable, optional
        ``joint_loss(saes, outputs, x) -> Tensor`` added to the summed losses (e.g. a cross-SAE penalty); the
        outputs then carry each SAE's reconstruction and TopK codes.
    callback : callable, optional
        ``callback(step, saes)`` after every logging step (e.g. to measure dictionary recovery during
        training); it must not change the SAEs.

    Returns
    -------
    TrainResult

    Raises
    ------
    ShapeError
        An SAE's ``d_in`` does not match the data.
    NonFiniteError
        NaN/inf in a batch or in the loss (the message gives the step and the last good checkpoint).
    ConfigError
        Invalid settings, or ``resume`` with a config that differs from the checkpoint's.
    """
    cfg = _as_config(config)
    source = make_source(cfg, activations, model, source=source)
    where = (
        "the store"
        if cfg.store or hasattr(activations, "sites")
        else "the model's site"
        if (cfg.model or model is not None)
        else "the activations"
    )
    cfg = _fill_d_in(cfg, source.shape, where)
    steps = total_steps(cfg, source)
    device = parse_device(cfg.device)
    meta = dict(source.info)
    if cfg.model or model is not None:
        meta.update(model=cfg.model or getattr(model, "mechwork_spec", None), site=source.site.name)
    saes = [SAE(s, device=device, meta=meta) for s in cfg.saes]
    if cfg.mfr is not None:
        if joint_loss is not None:
            raise ConfigError("give either config.mfr or a joint_loss, not both")
        from .mfr import MutualFeaturePenalty

        joint_loss = MutualFeaturePenalty(cfg.mfr)
        joint_loss.check(saes)
    run = _Run(cfg, saes, source, steps, device, joint_loss)
    out = run.out
    if resume:
        if out is None or not (out / "checkpoint").is_dir():
            raise CheckpointError(f"resume=True but there is no checkpoint in {out}/checkpoint")
        run.step, run.tokens = load_checkpoint(
            out / "checkpoint",
            cfg=cfg,
            saes=saes,
            optimizer=run.opt,
            since_fired=run.since_fired,
            extra={"run/metric_sums": run.acc, **run.joint_state()},
        )
        run.last_checkpoint = out / "checkpoint"
        run.history = _read_history(out, run.step)
    elif any(s.b_dec_init != "zeros" or s.normalize == "scale" for s in cfg.saes):
        sample = source.sample(N_INIT)
        for s in saes:
            s.init_from_data(sample)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out / "cfg.json", cfg, kind="mechwork-sae-run")
        _truncate_history(out, run.step)
    return _loop(run, stop_at_step, progress, callback)


def _loop(run: _Run, stop_at_step: int | None, progress: bool, callback: Any = None) -> TrainResult:
    cfg, out = run.cfg, run.out
    end = run.steps if stop_at_step is None else min(run.steps, stop_at_step)
    logger = _Logger(cfg, out, run.step, end, progress)
    t0 = time.perf_counter()
    try:
        batches = run.source.batches(cfg.batch_size, start=run.step)
        while run.step < end:
            x = next(batches).to(run.device, non_blocking=True)
            run.one_step(x)
            logger.tick()
            if run.step % cfg.log_every == 0 or run.step == run.steps:
                logger.log(run.record())
                if callback is not None:
                    callback(run.step, run.saes)
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < run.steps:
                run.checkpoint()
    finally:
        logger.close()
    stopped = run.step < run.steps
    if out is not None and stopped:
        run.checkpoint()
    if not stopped:
        for s in run.saes:  # as SAELens does: the constant input scale goes into the weights
            s.fold_scale()
    if out is not None and not stopped:
        from .io import saelens_note

        for s, rec in zip(run.saes, run.history[-len(run.saes) :] if run.history else [{}] * len(run.saes)):
            s.meta["tokens"] = run.tokens
            card = {
                "training": {k: rec.get(k) for k in ("fvu", "l0", "dead_fraction", "loss")},
                "tokens": run.tokens,
                "saelens": saelens_note(s),
                **run.card_extra(s),
            }
            s.save(out / "saes" / s.cfg.label, card=card)
    return TrainResult(run.saes, cfg, run.step, run.tokens, time.perf_counter() - t0, run.history, out, stopped)


class _Logger:
    """Progress bar, ``metrics.jsonl`` and (optionally) Weights & Biases."""

    def __init__(self, cfg: TrainConfig, out: Path | None, start: int, end: int, progress: bool) -> None:
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=end, initial=start, desc="sae train", unit="step", dynamic_ncols=True)
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8") if out is not None else None
        self.wandb = None
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError("wandb_project is set but wandb is not installed (pip install wandb)") from e
            self.wandb = wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), resume="allow")

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, recs: list[dict[str, Any]]) -> None:
        if self.bar is not None and recs:
            r = (
                recs[0]
                if len(recs) == 1
                else {k: sum(x[k] for x in recs) / len(recs) for k in ("loss", "l0", "dead_fraction", "fvu")}
            )
            self.bar.set_postfix(
                loss=f"{r['loss']:.4f}", L0=f"{r['l0']:.1f}", dead=f"{r['dead_fraction']:.1%}", FVU=f"{r['fvu']:.4f}"
            )
        if self.file is not None:
            for r in recs:
                self.file.write(json.dumps(r) + "\n")
            self.file.flush()
        if self.wandb is not None:
            for r in recs:
                self.wandb.log(
                    {f"{r['sae']}/{k}": v for k, v in r.items() if k not in ("sae", "step") and v is not None},
                    step=r["step"],
                )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _read_history(out: Path, step: int) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            r = json.loads(line)
            if r.get("step", 0) <= step:
                recs.append(r)
    return recs


def _truncate_history(out: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    from ..core.io import atomic_write_text

    path = out / "metrics.jsonl"
    if path.is_file():
        recs = _read_history(out, step)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))


__all__ = ["train", "TrainResult", "JointLoss"]
