"""Scores of attention heads read off their vocabulary-space circuits (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"; METHODS 4.2).

- :func:`copying_score`: the positive-eigenvalue fraction ``sum(Re lambda) / sum(|lambda|)`` of the full OV circuit
  ``W_E W_V W_O W_U``. Its non-zero eigenvalues are those of the ``d_head x d_head`` matrix ``(W_O W_U)(W_E W_V)``,
  so nothing of size ``|V|`` is built. +1: the head copies the token it attends to (promotes it); -1: suppresses it.
- :func:`prev_token_score`: the positional QK form. Each position's residual is taken as ``W_pos[p]`` plus the mean
  token embedding, normalised as the head's input LayerNorm would (centred for LayerNorm, scaled to norm
  ``sqrt(d_model)``), then scored with the head's ``W_Q``, ``W_K`` and biases, causally masked and softmaxed with
  ``1/sqrt(d_head)``; the score is the mean attention the form puts on the previous position (query positions
  ``1 .. n-1``). Learned absolute positions only (rotary / ALiBi models are refused: their form is not a matrix).
- :func:`induction_qk` / :func:`induction_score`: K-composition through a previous-token head ``via`` of an
  earlier layer: query token ``t`` against the *previous* token ``s`` of a key position, whose residual carries
  ``W_E[s] W_V W_O`` of the ``via`` head: ``(W_E W_Q)(W_E W_OV^via W_K)^T``. The score is the share of query
  tokens whose best key is "previous token = the same token" (the diagonal), as an induction head needs.
  Only these direct paths are modelled; LayerNorm scales of the key residual are omitted (see ``_model``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ._model import Tokens, check_head, embedding, unembedding
from .weights import Projection, _bias, layer_heads


@torch.no_grad()
def copying_score(model: Any, layer: int, head: int, *, output: str = "unembed") -> float:
    """Positive-eigenvalue fraction of the head's full OV circuit, in ``[-1, 1]``."""
    layer, head = check_head(model, layer, head, "copying_score")
    left = embedding(model) @ model.W_V[layer, head].detach()  # [V, E]
    right = model.W_O[layer, head].detach() @ unembedding(model, output=output)  # [E, V]
    lam = torch.linalg.eigvals((right @ left).double())
    total = lam.abs().sum()
    return float(lam.real.sum() / total) if total > 0 else 0.0


def _positional_residual(model: Any, n_pos: int | None) -> Tensor:
    W_pos = getattr(model, "W_pos", None)
    kind = getattr(model.cfg, "positional_embedding_type", "standard")
    if kind != "standard" or not isinstance(W_pos, Tensor):
        raise ConfigError(
            f"prev_token_score needs learned absolute position embeddings (W_pos); this model uses {kind!r} "
            "positions, whose attention form depends on the content and is not a fixed position x position matrix"
        )
    n_pos = min(n_pos or W_pos.shape[0], W_pos.shape[0])
    x = W_pos[:n_pos].detach() + embedding(model).mean(0)
    if getattr(model.cfg, "normalization_type", "LN") in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    return x * math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@torch.no_grad()
def positional_pattern(model: Any, layer: int, head: int, *, n_pos: int | None = None) -> Tensor:
    """The attention pattern ``[query pos, key pos]`` of the head's positional QK form (see module notes)."""
    layer, head = check_head(model, layer, head, "positional_pattern")
    x = _positional_residual(model, n_pos)
    q = x @ model.W_Q[layer, head].detach() + _bias(model, "b_Q", layer, head)
    k = x @ model.W_K[layer, head].detach() + _bias(model, "b_K", layer, head)
    s = (q @ k.T) / math.sqrt(q.shape[-1])
    mask = torch.ones_like(s, dtype=torch.bool).tril()
    return s.masked_fill(~mask, float("-inf")).softmax(-1)


def prev_token_score(model: Any, layer: int, head: int, *, n_pos: int | None = None) -> float:
    """Mean attention of the positional QK form on the previous position (``1.0``: a pure previous-token head)."""
    p = positional_pattern(model, layer, head, n_pos=n_pos)
    return float(p.diagonal(-1).mean())


@torch.no_grad()
def induction_qk(model: Any, layer: int, head: int, *, via: tuple[int, int] | None = None) -> Projection:
    """The head's K-composition QK form through previous-token head ``via``: query token x previous key token.

    ``via`` defaults to the head of an earlier layer with the highest :func:`prev_token_score`.
    """
    layer, head = check_head(model, layer, head, "induction_qk")
    if layer == 0:
        raise ConfigError("induction_qk needs a head of layer >= 1 (K-composition reads an earlier layer's output)")
    if via is None:
        cands = [(prev_token_score(model, la, h), (la, h)) for la, h in layer_heads(model, None) if la < layer]
        via = max(cands)[1]
    vl, vh = check_head(model, via[0], via[1], "induction_qk via")
    if vl >= layer:
        raise ConfigError(f"via head L{vl}H{vh} must be in an earlier layer than L{layer}H{head}")
    W_E = embedding(model)
    q = W_E @ model.W_Q[layer, head].detach()
    carried = (W_E @ model.W_V[vl, vh].detach()) @ model.W_O[vl, vh].detach()  # what via writes for token s
    k = carried @ model.W_K[layer, head].detach()
    return Projection(
        f"induction qk L{layer}H{head} via L{vl}H{vh}", q, k.T, None, "query token", "previous key token", Tokens(model)
    )


def induction_score(model: Any, layer: int, head: int, *, via: tuple[int, int] | None = None) -> float:
    """Share of query tokens whose best key is the one preceded by the same token (diagonal of :func:`induction_qk`)."""
    return induction_qk(model, layer, head, via=via).diagonal_score()


def head_scores(model: Any, *, output: str = "unembed") -> Any:
    """A table (pandas) of every head's copying, previous-token and induction scores."""
    import pandas as pd

    recs = []
    has_pos = getattr(model.cfg, "positional_embedding_type", "standard") == "standard"
    for la, h in layer_heads(model, None):
        rec: dict[str, Any] = {"layer": la, "head": h, "copying": copying_score(model, la, h, output=output)}
        rec["prev_token"] = prev_token_score(model, la, h) if has_pos else float("nan")
        rec["induction"] = induction_score(model, la, h) if la > 0 and has_pos else float("nan")
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


__all__ = [
    "copying_score",
    "prev_token_score",
    "positional_pattern",
    "induction_qk",
    "induction_score",
    "head_scores",
]
