"""Lenses: every layer's residual stream read out through the final LayerNorm and unembedding.

``logits_l = W_U . LN_f(T_l(h_l)) + b_U`` with the LayerNorm statistics recomputed for each layer's state (the
logit-lens semantics; METHODS 4.3), ``T_l`` the identity (logit lens) or a trained affine translator (tuned lens,
:mod:`mechwork.projection.tuned`). Both give a :class:`LensResult` with the trajectory statistics of the tuned-lens
paper per layer and position: KL to the final layer, entropy, rank and probability of a token, cross-entropy to the
next token. Works on both backends (``ln_final`` and ``unembed`` are called directly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.errors import DataError, ShapeError
from ..core.hooks import capture, model_device
from ._model import Tokens, require_lm_head


def prompt_tokens(model: Any, prompts: Any) -> tuple[Tensor, Tensor | None, Tensor]:
    """Text, texts, token ids or a ``PromptBatch`` -> ``(tokens [batch, pos], per-prompt answer position or None,
    mask of real tokens [batch, pos])``.

    Through the one conversion in core (:func:`mechwork.core.prompts.encode`); prompts of different lengths are
    right-padded, and their last real token is then the default read-out position (never a padding token).
    """
    from ..core.prompts import encode

    enc = encode(model, prompts)
    given = hasattr(prompts, "clean") and hasattr(prompts, "pos")
    return enc.tokens, (enc.last if given or enc.attention_mask is not None else None), enc.mask


@dataclass
class LensResult:
    """Lens read-outs and their trajectory statistics.

    Attributes
    ----------
    logits : Float[Tensor, "layer batch pos vocab"]
        One slice per residual-stream state in ``labels`` (only the positions asked for).
    labels : list of str
        ``"embed"`` (= resid_pre.0), ``"L0"`` ... (= resid_post of each block); the last equals the model output.
    positions : Int[Tensor, "batch pos"]
        Which token positions the ``pos`` axis holds, per prompt.
    tokens : Int[Tensor, "batch seq"] or None
        The input tokens (for next-token statistics and labels).
    kind : str
        ``"logit"`` or ``"tuned"``.
    real : Bool[Tensor, "batch seq"] or None
        Which input tokens are real (not right padding); :meth:`summary` averages over real positions only.
    """

    logits: Float[Tensor, "layer batch pos vocab"]
    labels: list[str]
    positions: Int[Tensor, "batch pos"]
    tokens: Int[Tensor, "batch seq"] | None = None
    kind: str = "logit"
    real: Tensor | None = None

    # ------------------------------------------------------------------------------------ statistics
    def log_probs(self) -> Float[Tensor, "layer batch pos vocab"]:
        return self.logits.float().log_softmax(-1)

    def kl_to_final(self) -> Float[Tensor, "layer batch pos"]:
        """``KL(final || layer)`` in nats (the tuned-lens training objective; 0 at the last layer)."""
        lp = self.log_probs()
        final = lp[-1:]
        return (final.exp() * (final - lp)).sum(-1)

    def entropy(self) -> Float[Tensor, "layer batch pos"]:
        lp = self.log_probs()
        return -(lp.exp() * lp).sum(-1)

    def _token_index(self, token: Any) -> Tensor:
        """Token ids broadcast to ``[batch, pos]``."""
        b, p = self.positions.shape
        if token is None:  # the model's own answer: its final-layer top-1
            return self.logits[-1].argmax(-1)
        if isinstance(token, Tensor):
            t = token.to(self.logits.device).long()
            if t.ndim == 0:
                return t.expand(b, p)
            if t.shape == (b,):
                return t[:, None].expand(b, p)
            if t.shape == (b, p):
                return t
            raise ShapeError(f"token ids must be a scalar, [batch={b}] or [batch={b}, pos={p}], got {tuple(t.shape)}")
        if isinstance(token, (int, str)):
            raise ShapeError("pass a token id tensor, or use prob_of(model, token) for a token string")
        raise ShapeError(f"cannot read token ids from {type(token).__name__}")

    def rank(self, token: Any = None) -> Int[Tensor, "layer batch pos"]:
        """Rank of ``token`` (0 = top) at every layer; default: the model's final top-1 prediction."""
        idx = self._token_index(token)
        lg = self.logits.float()
        own = lg.gather(-1, idx[None, ..., None].expand(lg.shape[0], -1, -1, 1))
        return (lg > own).sum(-1)

    def prob(self, token: Any = None) -> Float[Tensor, "layer batch pos"]:
        """Probability of ``token`` at every layer; default: the model's final top-1 prediction."""
        idx = self._token_index(token)
        lp = self.log_probs()
        return lp.gather(-1, idx[None, ..., None].expand(lp.shape[0], -1, -1, 1)).squeeze(-1).exp()

    def next_tokens(self) -> tuple[Int[Tensor, "batch pos"], Tensor]:
        """The token after each lens position and a mask of positions that have one."""
        if self.tokens is None:
            raise DataError("this lens result has no input tokens; next-token statistics need them")
        seq = self.tokens.shape[1]
        nxt = (self.positions + 1).clamp_max(seq - 1)
        return self.tokens.to(self.positions.device).gather(1, nxt), self.positions + 1 < seq

    def cross_entropy(self) -> Float[Tensor, "layer batch pos"]:
        """Next-token cross-entropy (NaN where the position is the last of its prompt)."""
        tgt, ok = self.next_tokens()
        ce = -self.log_probs().gather(-1, tgt[None, ..., None].expand(len(self.labels), -1, -1, 1)).squeeze(-1)
        return ce.masked_fill(~ok[None], float("nan"))

    def summary(self, mask: Tensor | None = None) -> Any:
        """Per layer (pandas): mean KL to final, entropy, rank and probability of the final answer, next-token CE,
        over every lens position that holds a real token (or those where ``mask [batch, pos]`` is true)."""
        import pandas as pd

        if mask is None and self.real is not None:
            mask = self.real.to(self.positions.device).gather(1, self.positions)

        cols = {"kl_to_final": self.kl_to_final(), "entropy": self.entropy(), "answer_rank": self.rank().float()}
        cols["answer_prob"] = self.prob()
        if self.tokens is not None:
            cols["next_token_ce"] = self.cross_entropy()
        if mask is not None:
            if mask.shape != self.positions.shape:
                raise ShapeError(f"mask must have shape {tuple(self.positions.shape)}, got {tuple(mask.shape)}")
            cols = {k: v[:, mask.to(v.device)] for k, v in cols.items()}
        data = {k: [float(v[i].nanmean()) for i in range(len(self.labels))] for k, v in cols.items()}
        return pd.DataFrame({"layer": self.labels, **data}).assign(lens=self.kind)

    # ------------------------------------------------------------------------------------ tables
    def logit_diff(
        self, answer: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"], *, pos: int = -1
    ) -> Float[Tensor, "layer batch"]:
        """``logit[answer] - logit[wrong]`` at lens position ``pos`` for every layer and prompt."""
        lg = self.logits[:, :, pos]
        a = answer.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1)
        w = wrong.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1)
        return (lg.gather(-1, a) - lg.gather(-1, w)).squeeze(-1)

    def top_tokens(self, model: Any, k: int = 5, *, prompt: int = 0, pos: int = -1) -> list[list[tuple[str, float]]]:
        """Top-``k`` (token, probability) per layer for one prompt and lens position."""
        probs = self.logits[:, prompt, pos].float().softmax(-1)
        vals, idx = probs.topk(k, dim=-1)
        names = Tokens(model).names(idx.flatten())
        return [[(names[r * k + j], float(vals[r, j])) for j in range(k)] for r in range(idx.shape[0])]

    # ------------------------------------------------------------------------------------ views
    def plot(self, values: Float[Tensor, "layer batch"] | None = None, *, title: str = "Logit lens") -> Any:
        """A plotly line of ``values`` (e.g. :meth:`logit_diff`) per layer: mean and per-prompt spread."""
        from ..viz import layer_line

        if values is None:
            raise ShapeError("pass the per-layer values to plot, e.g. lens.plot(lens.logit_diff(answer, wrong))")
        return layer_line(values, self.labels, title=title)

    def heatmap(self, model: Any, stat: str = "kl", *, prompt: int = 0, k: int = 3) -> Any:
        """Layer x position heatmap of ``stat`` (``kl``, ``entropy``, ``rank``, ``prob``, ``ce``) for one prompt,
        with the input tokens as labels and each cell's top-``k`` predictions on hover."""
        from .plots import lens_heatmap

        return lens_heatmap(self, model, stat=stat, prompt=prompt, k=k)

    def __repr__(self) -> str:
        L, b, p, v = self.logits.shape
        return f"LensResult({self.kind} lens, {L} states x {b} prompts x {p} positions, vocab {v})"

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        L, b, p, v = self.logits.shape
        s = self.summary()
        rows = [[r.layer, r.kl_to_final, r.entropy, r.answer_rank] for r in s.itertuples()]
        facts = {"prompts": b, "positions": p, "vocabulary": v}
        return card(f"{self.kind} lens", facts, table=(["state", "KL to final", "entropy", "answer rank"], rows))


#: backward-compatible name of the result type
LogitLens = LensResult


def resid_names(model: Any) -> list[str]:
    n_layers = int(model.cfg.n_layers)
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def lens_labels(model: Any) -> list[str]:
    return ["embed"] + [f"L{i}" for i in range(int(model.cfg.n_layers))]


def _positions(tokens: Tensor, pos: Any, default: Tensor | None) -> Tensor:
    b, p = tokens.shape
    if isinstance(pos, str) and pos == "answer":
        if default is None:
            raise DataError("pos='answer' needs a PromptBatch (its answer positions)")
        pos = default
    if pos is None:
        return torch.arange(p, device=tokens.device).expand(b, p)
    if isinstance(pos, int):
        return torch.full((b, 1), pos % p, device=tokens.device)
    if isinstance(pos, Tensor) and pos.ndim == 1 and pos.shape[0] == b:
        return pos.to(tokens.device)[:, None]
    out = torch.as_tensor(list(pos), device=tokens.device).expand(b, -1) % p
    if out.numel() == 0:
        raise DataError("no positions asked for")
    return out


@torch.inference_mode()
def run_lens(
    model: Any,
    prompts: Any,
    *,
    pos: Any = -1,
    translate: Callable[[int, Tensor], Tensor] | None = None,
    kind: str = "logit",
) -> LensResult:
    """Shared lens driver: capture every residual state once, translate it (tuned lens) and read it out."""
    require_lm_head(model, f"the {kind} lens")
    tokens, answer_pos, real = prompt_tokens(model, prompts)
    tokens = tokens.to(model_device(model))
    if isinstance(pos, int) and pos == -1 and answer_pos is not None:
        pos = answer_pos
    names = resid_names(model)
    acts = capture(model, tokens, names, stop=False)
    positions = _positions(tokens, pos, answer_pos)
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]
    out = []
    for i, n in enumerate(names):
        h = acts[n][rows, positions]  # [batch, npos, d]
        if translate is not None and i < len(names) - 1:
            h = translate(i, h)
        out.append(model.unembed(model.ln_final(h)))
    return LensResult(torch.stack(out), lens_labels(model), positions, tokens, kind, real)


def logit_lens(
    model: Any,
    prompts: Any,
    *,
    pos: Int[Tensor, " batch"] | int | Sequence[int] | str | None = -1,
) -> LensResult:
    """Apply the logit lens to every layer's residual stream.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
        Needs a trained LM head (refused on headless encoders such as MiniLM).
    prompts : str, list of str, Int[Tensor, "batch pos"] or PromptBatch
        Text is tokenised with the model's tokenizer (BOS first); a ``PromptBatch`` reads its answer positions.
    pos : int, sequence of int, Int[Tensor, "batch"], "answer" or None
        Positions to read: ``-1`` (default: the last token, or a ``PromptBatch``'s answer positions), a list of
        positions, a per-prompt position tensor, ``"answer"``, or None for every position.

    Returns
    -------
    LensResult
        ``logits[i]`` for ``labels[i]`` in ``["embed", "L0", ..., "L{n-1}"]``; ``.kl_to_final()``, ``.entropy()``,
        ``.rank()``, ``.prob()``, ``.cross_entropy()``, ``.summary()``, ``.heatmap(model)``.
    """
    return run_lens(model, prompts, pos=pos)
