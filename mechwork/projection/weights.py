"""Weights projected into vocabulary space (Dar, Geva, Gupta & Berant; METHODS 4.1-4.2).

``project(model, what, ...)`` gives token-level readings of parameters: an attention head's OV circuit
(``W_E W_V W_O W_U``: source token -> promoted output token), its QK circuit (``W_E W_Q W_K^T W_E^T``: query
token x key token), an MLP neuron's output value (``W_out[i] W_U``: tokens it promotes) or input key
(``W_E W_in[:, i]``: tokens it reads), or any residual-stream direction (``v W_U``). Parameter projections ignore
the final LayerNorm's per-token normalisation (its affine part is folded into ``W_U`` when weights are processed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, ShapeError

KINDS = ("ov", "qk", "neuron_out", "neuron_in", "direction")


@dataclass
class Projection:
    """A matrix over the vocabulary: rows index inputs (source/query tokens, or one row), columns output tokens."""

    what: str
    matrix: Float[Tensor, "rows vocab"]
    row_tokens: list[str] | None
    col_tokens: list[str]

    def top(self, k: int = 10, *, row: int | None = None, largest: bool = True) -> list[tuple[str, float]]:
        """Top-``k`` output tokens of one row (default: the first / only row)."""
        vec = self.matrix[0 if row is None else row]
        vals, idx = vec.topk(k, largest=largest)
        return [(self.col_tokens[i], float(v)) for i, v in zip(idx.tolist(), vals.tolist())]

    def top_pairs(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` largest (row token, column token, value) entries."""
        flat = self.matrix.flatten()
        vals, idx = flat.topk(k)
        n = self.matrix.shape[1]
        rows = self.row_tokens or [""] * self.matrix.shape[0]
        return [(rows[i // n], self.col_tokens[i % n], float(v)) for i, v in zip(idx.tolist(), vals.tolist())]

    def diagonal_score(self) -> float:
        """Share of rows whose largest entry is on the diagonal (a copying head scores near 1)."""
        if self.matrix.shape[0] != self.matrix.shape[1]:
            raise ShapeError("diagonal_score needs a square token x token matrix")
        return float(
            (self.matrix.argmax(-1) == torch.arange(self.matrix.shape[0], device=self.matrix.device)).float().mean()
        )


def _vocab(model: Any) -> list[str]:
    return [model.to_single_str_token(i) for i in range(int(model.cfg.d_vocab))]


@torch.no_grad()
def project(
    model: Any,
    what: str | Tensor,
    *,
    layer: int | None = None,
    head: int | None = None,
    neuron: int | None = None,
) -> Projection:
    """Project weights (or a residual direction) into vocabulary space.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    what : {"ov", "qk", "neuron_out", "neuron_in", "direction"} or Tensor
        A tensor of shape ``[d_model]`` or ``[n, d_model]`` is read as residual directions through ``W_U``.
    layer, head, neuron : int
        The component (``ov``/``qk`` need ``layer`` and ``head``; neurons need ``layer`` and ``neuron``).

    Returns
    -------
    Projection
        ``ov``: ``[vocab, vocab]`` source x output token; ``qk``: ``[vocab, vocab]`` query x key token;
        ``neuron_out``: ``[1, vocab]`` promoted tokens; ``neuron_in``: ``[1, vocab]`` input tokens that drive it.
    """
    vocab = _vocab(model)
    if isinstance(what, Tensor):
        d = what if what.ndim == 2 else what[None]
        if d.shape[-1] != int(model.cfg.d_model):
            raise ShapeError(f"direction has width {d.shape[-1]}, model d_model is {int(model.cfg.d_model)}")
        return Projection("direction", d.to(model.W_U) @ model.W_U, None, vocab)
    if what not in KINDS:
        raise ConfigError(f"unknown projection {what!r}; expected one of {KINDS} or a direction tensor")
    n_layers = int(model.cfg.n_layers)
    if layer is None or not 0 <= layer < n_layers:
        raise ConfigError(f"projection {what!r} needs layer in [0, {n_layers}), got {layer}")
    W_E, W_U = model.W_E, model.W_U
    if what in ("ov", "qk"):
        n_heads = int(model.cfg.n_heads)
        if head is None or not 0 <= head < n_heads:
            raise ConfigError(f"projection {what!r} needs head in [0, {n_heads}), got {head}")
        if what == "ov":
            m = (W_E @ model.W_V[layer, head]) @ (model.W_O[layer, head] @ W_U)
        else:
            m = (W_E @ model.W_Q[layer, head]) @ (W_E @ model.W_K[layer, head]).T
        return Projection(f"{what} L{layer}H{head}", m, vocab, vocab)
    if getattr(model.cfg, "attn_only", False):
        raise ConfigError("this model has no MLPs (attn_only)")
    d_mlp = int(model.cfg.d_mlp)
    if neuron is None or not 0 <= neuron < d_mlp:
        raise ConfigError(f"projection {what!r} needs neuron in [0, {d_mlp}), got {neuron}")
    if what == "neuron_out":
        m = model.W_out[layer][neuron][None] @ W_U
    else:
        m = (W_E @ model.W_in[layer][:, neuron])[None]
    return Projection(f"{what} L{layer}N{neuron}", m, None, vocab)
