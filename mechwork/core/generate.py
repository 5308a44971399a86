"""Backend-agnostic sampling (used by style evaluation and steering): works with hooks active."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .hooks import HookFn, check_tokens, model_device


@torch.inference_mode()
def sample(
    model: Any,
    prompt: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    stop_token: int | None = None,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> list[list[int]]:
    """Sample continuations of each prompt row (same length prompts), full re-forward per step.

    Returns the new token ids per row, cut after ``stop_token`` (inclusive) when given. Sampling is seeded
    and independent of the global RNG; ``temperature=0`` is greedy.
    """
    prompt = check_tokens(model, prompt, what="prompt")
    dev = model_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    toks = prompt.to(dev)
    n_ctx = int(model.cfg.n_ctx)
    steps = min(max_new_tokens, n_ctx - toks.shape[1])
    done = torch.zeros(toks.shape[0], dtype=torch.bool)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(steps):
            logits = model(toks)[:, -1].float().cpu()
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            toks = torch.cat([toks, nxt[:, None].to(dev)], dim=1)
            if stop_token is not None:
                done |= nxt == stop_token
                if bool(done.all()):
                    break
    out = []
    for row in toks[:, prompt.shape[1] :].tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token) + 1]
        out.append(row)
    return out
