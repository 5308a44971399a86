"""The logit lens: the residual stream after each layer read out through the final LayerNorm and unembedding.

``logits_l = W_U . LN_f(h_l) + b_U`` with the LayerNorm statistics recomputed for each layer's state (the
logit-lens semantics; METHODS 4.3). Works on both backends (``ln_final`` and ``unembed`` are called directly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.errors import ShapeError
from ..core.hooks import capture, check_tokens, model_device


@dataclass
class LogitLens:
    """Logit-lens read-outs.

    Attributes
    ----------
    logits : Float[Tensor, "layer batch pos vocab"]
        One slice per residual-stream state in ``labels`` (only the positions asked for).
    labels : list of str
        ``"embed"`` (= resid_pre.0), ``"L0"`` ... (= resid_post of each block); the last equals the model output.
    positions : Int[Tensor, "batch pos"]
        Which token positions the ``pos`` axis holds, per prompt.
    """

    logits: Float[Tensor, "layer batch pos vocab"]
    labels: list[str]
    positions: Int[Tensor, "batch pos"]

    def log_probs(self) -> Float[Tensor, "layer batch pos vocab"]:
        return self.logits.log_softmax(-1)

    def logit_diff(
        self, answer: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"], *, pos: int = -1
    ) -> Float[Tensor, "layer batch"]:
        """``logit[answer] - logit[wrong]`` at lens position ``pos`` for every layer and prompt."""
        lg = self.logits[:, :, pos]
        a = answer.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1)
        w = wrong.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1)
        return (lg.gather(-1, a) - lg.gather(-1, w)).squeeze(-1)

    def top_tokens(self, model: Any, k: int = 5, *, prompt: int = 0, pos: int = -1) -> list[list[tuple[str, float]]]:
        """Top-``k`` (token, probability) per layer for one prompt and position."""
        probs = self.logits[:, prompt, pos].float().softmax(-1)
        vals, idx = probs.topk(k, dim=-1)
        return [
            [(model.to_single_str_token(int(i)), float(v)) for i, v in zip(row_i, row_v)]
            for row_i, row_v in zip(idx.tolist(), vals.tolist())
        ]

    def plot(self, values: Float[Tensor, "layer batch"] | None = None, *, title: str = "Logit lens") -> Any:
        """A plotly line of ``values`` (e.g. :meth:`logit_diff`) per layer: mean and per-prompt spread."""
        from ..viz import layer_line

        if values is None:
            raise ShapeError("pass the per-layer values to plot, e.g. lens.plot(lens.logit_diff(answer, wrong))")
        return layer_line(values, self.labels, title=title)


@torch.inference_mode()
def logit_lens(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    pos: Int[Tensor, " batch"] | int | Sequence[int] | None = -1,
) -> LogitLens:
    """Apply the logit lens to every layer's residual stream.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    tokens : Int[Tensor, "batch pos"]
        Prompts (BOS first).
    pos : int, sequence of int, Int[Tensor, "batch"] or None
        Positions to read: ``-1`` (default, last token), a list of positions, a per-prompt position tensor
        (e.g. ``PromptBatch.pos``), or None for every position.

    Returns
    -------
    LogitLens
        ``logits[i]`` for ``labels[i]`` in ``["embed", "L0", ..., "L{n-1}"]``.
    """
    tokens = check_tokens(model, tokens).to(model_device(model))
    n_layers = int(model.cfg.n_layers)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    acts = capture(model, tokens, names, stop=False)
    b, p = tokens.shape
    if pos is None:
        positions = torch.arange(p, device=tokens.device).expand(b, p)
    elif isinstance(pos, int):
        positions = torch.full((b, 1), pos % p, device=tokens.device)
    elif isinstance(pos, Tensor) and pos.ndim == 1 and pos.shape[0] == b:
        positions = pos.to(tokens.device)[:, None]
    else:
        positions = torch.as_tensor(list(pos), device=tokens.device).expand(b, -1) % p
    rows = torch.arange(b, device=tokens.device)[:, None]
    out = []
    for n in names:
        h = acts[n][rows, positions]  # [batch, npos, d]
        out.append(model.unembed(model.ln_final(h)))
    return LogitLens(torch.stack(out), ["embed"] + [f"L{i}" for i in range(n_layers)], positions)
