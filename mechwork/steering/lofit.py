"""LoFiT: localized fine-tuning of attention-head bias vectors (Yin, Ye, Durrett, NeurIPS 2024; METHODS 7.7).

Stage 1 learns a scale vector ``A`` per head on ``blocks.L.attn.hook_z`` (``z ↦ (1 + A) ⊙ z``) with an L1
penalty and ranks heads by ``‖A‖₂``; stage 2 starts from the unmodified model and learns a bias ``v`` on the
top-``k`` heads only (``z ↦ z + v``): the steerer is biases only. The task loss is supervised fine-tuning on the
target texts (completion only: the loss counts the tokens after the prompt) or DPO with target = chosen and
source = rejected continuations of the same prompts. Written from the paper's description; no code copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.config import Config, check_choices
from ..core.errors import ConfigError, DataError
from .base import ADDITIVE_RANGE, Method, check_loss, frozen
from .data import Prompts, encode, logits


def common_prefix(p: Prompts) -> int:
    """Number of leading tokens shared by every row (the prompt of completion-only training)."""
    n = int(p.lengths.min())
    same = (p.tokens[:, :n] == p.tokens[:1, :n]).all(0)
    bad = (~same).nonzero()
    return int(bad[0]) if len(bad) else n


def completion_mask(p: Prompts, prompt_tokens: int) -> Tensor:
    """``Bool[n, pos-1]``: which next-token predictions count (targets after the prompt, real tokens)."""
    cols = torch.arange(1, p.tokens.shape[1])[None]
    return (cols >= prompt_tokens) & p.mask[:, 1:]


def sequence_logprob(model: Any, p: Prompts, cmask: Tensor, hooks: list) -> Tensor:
    """Summed log-probability of each row's completion tokens, ``[n]``."""
    dev = next(model.parameters()).device
    lg = logits(model, p, hooks)
    lp = lg[:, :-1].float().log_softmax(-1).gather(-1, p.tokens[:, 1:, None].to(dev)).squeeze(-1)
    return (lp * cmask.to(dev)).sum(1)


def completion_loss(
    model: Any, texts: Any, *, steerer: Any = None, strength: float | None = None, prompt_tokens: int | None = None
) -> float:
    """Mean cross-entropy per completion token of ``texts`` (after their common prefix), optionally steered.

    The held-out objective LoFiT is judged on (lower is better).
    """
    p = encode(model, texts, what="texts")
    k = common_prefix(p) if prompt_tokens is None else prompt_tokens
    cm = completion_mask(p, k)
    hooks = steerer.hooks(model, strength=strength, positions="all") if steerer is not None else []
    with torch.inference_mode():
        total = sequence_logprob(model, p, cm, hooks)
    return float(-total.sum() / cm.sum().clamp_min(1))


@dataclass(frozen=True)
class LoFiT(Config, Method):
    """LoFiT: select heads by a sparse learnt scale (stage 1), then learn their bias vectors (stage 2).

    Parameters
    ----------
    k : int, optional
        Heads tuned in stage 2; default 10% of the heads (at least 1) — the paper's plateau.
    heads : list of (layer, head) or "all", optional
        Skip stage 1 and tune these heads (random-head and all-head comparisons).
    loss : {"sft", "dpo"}
        ``sft``: cross-entropy on the target texts' tokens after their common prefix (completion only);
        ``dpo``: target = chosen, source = rejected (paired by index, equal sizes), ``beta`` 0.5 as in the paper,
        reference log-probabilities from the unmodified model.
    stage1_lr, l1, stage2_lr, steps, batch_size
        Adam(W) learning rates, L1 weight on ``A`` and optimisation steps per stage (minibatches of
        ``batch_size``; paper: batch 8, 5 epochs, stage-1 lr 5e-3, λ_L1 5e-4 to 5e-3, stage-2 lr 1e-2).
    prompt_tokens : int, optional
        Tokens of each text that are prompt (no loss); default the texts' common prefix.

    The steerer adds ``v`` at ``hook_z`` (zeros on unchosen heads); strength multiplies ``v``, range [-4, 4].
    """

    k: int | None = None
    heads: Any = None
    loss: Literal["sft", "dpo"] = "sft"
    beta: float = 0.5
    stage1_lr: float = 5e-3
    l1: float = 1e-3
    stage2_lr: float = 1e-2
    steps: int = 200
    batch_size: int = 8
    prompt_tokens: int | None = None
    seed: int = 0

    name = "lofit"
    needs_logits = True
    strength_range = ADDITIVE_RANGE

    def _fit(self, model: Any, source: Prompts, target: Prompts, *, progress: bool) -> Any:
        from tqdm.auto import tqdm

        check_choices(self, "loss")
        if self.loss == "dpo" and len(source) != len(target):
            raise DataError(
                f"LoFiT with DPO pairs target (chosen) and source (rejected) texts by index: equal sizes needed, "
                f"got {len(source)} source and {len(target)} target"
            )
        L, H, E = int(model.cfg.n_layers), int(model.cfg.n_heads), int(model.cfg.d_head)
        n_total = L * H
        k = self.k if self.k is not None else max(1, math.ceil(0.1 * n_total))
        if not 1 <= k <= n_total:
            raise ConfigError(f"k must be between 1 and {n_total} (the model's heads), got {k}")
        dev = next(model.parameters()).device
        g = torch.Generator().manual_seed(self.seed)
        names = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]
        prompt = self.prompt_tokens if self.prompt_tokens is not None else common_prefix(target)
        data = _Data(model, source, target, prompt, self.loss)
        card: dict[str, Any] = {"prompt_tokens": prompt, "k": k}
        with frozen(model):
            if self.heads is None:
                A = (torch.randn(L, H, E, generator=g) * 1e-3).to(dev).requires_grad_(True)
                hooks = [(n, _scale_hook(A, layer)) for layer, n in enumerate(names)]
                hist1 = self._train(model, data, A, hooks, self.stage1_lr, self.l1, g, tqdm, progress, "LoFiT stage 1")
                score = A.detach().norm(dim=-1).cpu()
                order = torch.argsort(score.flatten(), descending=True, stable=True)[:k]
                chosen = sorted((int(i) // H, int(i) % H) for i in order)
                card.update(head_scores=score.tolist(), stage1=hist1)
            elif self.heads == "all":
                chosen = [(layer, h) for layer in range(L) for h in range(H)]
            else:
                chosen = sorted({(int(a), int(b)) for a, b in self.heads})
                bad = [x for x in chosen if not (0 <= x[0] < L and 0 <= x[1] < H)]
                if bad:
                    raise ConfigError(f"heads {bad} do not exist in a model with {L} layers x {H} heads")
            sel = torch.zeros(L, H, 1, device=dev)
            for layer, h in chosen:
                sel[layer, h] = 1
            v = (torch.randn(L, H, E, generator=g).to(dev) * 1e-3 * sel).requires_grad_(True)
            hooks = [(n, _bias_hook(v, sel, layer)) for layer, n in enumerate(names)]
            hist2 = self._train(model, data, v, hooks, self.stage2_lr, 0.0, g, tqdm, progress, "LoFiT stage 2")
        biases = {names[layer]: (v[layer] * sel[layer]).detach() for layer in sorted({c[0] for c in chosen})}
        card.update(heads=[list(c) for c in chosen], stage2=hist2)
        return {}, biases, card

    def _train(self, model, data, param, hooks, lr, l1, g, tqdm, progress, desc) -> list[dict[str, float]]:  # noqa: ANN001
        opt = torch.optim.AdamW([param], lr=lr, weight_decay=0.0)
        history = []
        for step in tqdm(range(self.steps), desc=desc, disable=not progress):
            for group in opt.param_groups:  # linear decay, as HF TrainingArguments
                group["lr"] = lr * (1 - step / self.steps)
            idx = torch.randperm(data.n, generator=g)[: self.batch_size]
            task = data.loss(idx, hooks, self.beta)
            loss = task + l1 * param.abs().sum() if l1 else task
            check_loss(loss, desc, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % max(1, self.steps // 20) == 0 or step == self.steps - 1:
                history.append({"step": step, "loss": float(task.detach())})
        return history


def _scale_hook(A: Tensor, layer: int) -> Any:
    def fn(z: Tensor, hook: Any = None) -> Tensor:
        return z * (1 + A[layer])

    return fn


def _bias_hook(v: Tensor, sel: Tensor, layer: int) -> Any:
    def fn(z: Tensor, hook: Any = None) -> Tensor:
        return z + v[layer] * sel[layer]

    return fn


class _Data:
    """Minibatches of the SFT or DPO objective (DPO reference log-probs computed once, unmodified model)."""

    def __init__(self, model: Any, source: Prompts, target: Prompts, prompt: int, loss: str) -> None:
        self.model, self.kind, self.target, self.source = model, loss, target, source
        self.cm_t = completion_mask(target, prompt)
        self.cm_s = completion_mask(source, prompt)
        self.n = len(target)
        if loss == "dpo":
            with torch.inference_mode():
                self.ref_t = sequence_logprob(model, target, self.cm_t, []).clone()
                self.ref_s = sequence_logprob(model, source, self.cm_s, []).clone()

    def loss(self, idx: Tensor, hooks: list, beta: float) -> Tensor:
        t = self.target.select(idx)
        if self.kind == "sft":
            lp = sequence_logprob(self.model, t, self.cm_t[idx], hooks)
            return -lp.sum() / self.cm_t[idx].sum().clamp_min(1)
        s = self.source.select(idx)
        lc = sequence_logprob(self.model, t, self.cm_t[idx], hooks) - self.ref_t[idx].to(lp_dev(self.model))
        lr = sequence_logprob(self.model, s, self.cm_s[idx], hooks) - self.ref_s[idx].to(lp_dev(self.model))
        return -F.logsigmoid(beta * (lc - lr)).mean()


def lp_dev(model: Any) -> torch.device:
    return next(model.parameters()).device
