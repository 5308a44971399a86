"""Steered generation that stays right under KV caching, for batches of prompts of different lengths.

Prompts are left-padded (with an attention mask, so pad tokens are neither attended nor counted in the
positional embeddings); the steerer's hooks see absolute positions (see :mod:`.positions`), so a rule such as
``"generated"`` reaches the first generated token and every later one whether or not the cache is used.

``HookedTransformer``: mechwork's own loop, one forward of the prompt then one token per step on
TransformerLens's key-value cache (``use_cache=True``), or a full re-forward per step (``use_cache=False``).
``TransformerBridge``: always the re-forward loop. TransformerLens 3.9's cached ``TransformerBridge.generate``
gives wrong tokens on a GPT-2 Hugging Face folder even without any hook (greedy, one unpadded prompt: second
token 84 where Hugging Face, the uncached bridge and ``HookedTransformer`` all give 144, a logit gap of 0.008,
far above rounding), so mechwork does not decode the bridge through that cache. Hooks installed with
``steerer.apply`` still see absolute positions inside the bridge's own ``generate`` (the tracker), whatever
that loop computes.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..core.errors import ConfigError, DataError
from ..core.hooks import model_device
from ..core.kind import require_causal, require_logits
from ..core.sites import is_bridge
from .data import encode
from .positions import PositionState
from .steerer import Steerer


def left_pad(tokens: Tensor, mask: Tensor, pad: int) -> tuple[Int[Tensor, "b pos"], Bool[Tensor, "b pos"]]:
    """Move right-padded rows to the right edge (left padding), keeping each row's real tokens in order."""
    n, width = tokens.shape
    lengths = mask.sum(1)
    out = torch.full_like(tokens, pad)
    m = torch.zeros_like(mask)
    for i in range(n):
        k = int(lengths[i])
        out[i, width - k :] = tokens[i, :k]
        m[i, width - k :] = True
    return out, m


def _pick(logits: Tensor, temperature: float, gen: torch.Generator) -> Tensor:
    logits = logits.float().cpu()
    if temperature <= 0:
        return logits.argmax(-1)
    return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)


@torch.inference_mode()
def generate(
    model: Any,
    prompts: Any,
    *,
    steerer: Steerer | None = None,
    strength: float | None = None,
    positions: Any = None,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    stop_token: int | None = None,
) -> list[list[int]]:
    """Generate continuations of each prompt with the steerer applied at every step.

    Parameters
    ----------
    prompts
        Text, a list of texts, tokens ``[batch, pos]`` or a ``PromptBatch``; rows of different lengths are
        left-padded.
    steerer, strength, positions
        The steerer, its strength (default: the steerer's) and positions rule override. ``positions`` counts
        absolute columns of the left-padded layout: ``"prompt"`` = the padded prompt width, ``"generated"`` =
        from there on.
    temperature
        ``0`` is greedy; sampling is seeded by ``seed`` and does not touch the global RNG.
    use_cache
        KV-cached decoding on ``HookedTransformer`` (same tokens as without the cache, up to float rounding of
        near-ties); the bridge always re-runs the sequence (see the module notes).
    stop_token
        Rows are cut after it (inclusive); default the tokenizer's EOS when it differs from BOS.

    Returns
    -------
    list of list of int
        The new token ids of each prompt.
    """
    require_logits(model, "steered generation")
    require_causal(model, "steered generation")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    p = encode(model, prompts, what="prompts")
    pad = int(getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0)
    toks, mask = left_pad(p.tokens, p.mask, pad)
    n_ctx = int(model.cfg.n_ctx)
    steps = min(max_new_tokens, n_ctx - toks.shape[1])
    if steps < max_new_tokens and steps <= 0:
        raise DataError(f"the prompts fill the model's context ({n_ctx} tokens): no room to generate")
    if stop_token is None:
        tok = getattr(model, "tokenizer", None)
        eos, bos = getattr(tok, "eos_token_id", None), getattr(tok, "bos_token_id", None)
        stop_token = eos if eos is not None and eos != bos else None
    dev = model_device(model)
    state = PositionState(prompt_len=toks.shape[1], explicit=True)
    hooks = steerer.hooks(model, strength=strength, positions=positions, state=state) if steerer is not None else []
    gen = torch.Generator().manual_seed(seed)
    toks, mask = toks.to(dev), mask.to(dev)
    with model.hooks(fwd_hooks=hooks):
        out = _loop(model, toks, mask, steps, temperature, gen, stop_token, state, use_cache and not is_bridge(model))
    rows = []
    for row in out[:, toks.shape[1] :].tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token) + 1]
        rows.append(row)
    return rows


def _loop(
    model: Any,
    toks: Tensor,
    mask: Tensor,
    steps: int,
    temperature: float,
    gen: torch.Generator,
    stop_token: int | None,
    state: PositionState,
    cache: bool,
) -> Tensor:
    kv = None
    if cache:
        from transformer_lens import TransformerLensKeyValueCache

        kv = TransformerLensKeyValueCache.init_cache(model.cfg, toks.device, toks.shape[0])
    done = torch.zeros(toks.shape[0], dtype=torch.bool)
    fed = 0
    for _ in range(steps):
        if kv is not None:
            state.offset = fed
            new = toks[:, fed:]
            logits = model(new, attention_mask=mask[:, fed:].long(), past_kv_cache=kv)
            fed = toks.shape[1]
        else:
            state.offset = 0
            logits = model(toks, attention_mask=mask.long())
        nxt = _pick(logits[:, -1], temperature, gen)
        toks = torch.cat([toks, nxt[:, None].to(toks.device)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if stop_token is not None:
            done |= nxt == stop_token
            if bool(done.all()):
                break
    return toks
