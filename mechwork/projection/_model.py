"""What projection reads from a model: the embedding and read-out matrices, index checks and token names.

Conventions (documented once, used everywhere in :mod:`mechwork.projection`)
----------------------------------------------------------------------------
- **Input side** (what a component *reads*: QK forms, neuron keys, value inputs) uses the token embedding
  ``W_E`` ``[vocab, d_model]``; **output side** (what a component *writes*: OV outputs, neuron values, directions)
  uses the read-out ``W_U`` ``[d_model, vocab]``. For tied models (GPT-2, BERT) the two are the same matrix up to
  the final LayerNorm folded into ``W_U``; ``output="embed"`` reads outputs through ``W_E^T`` instead (Dar et al.'s
  single-``E`` convention, and the only choice on a model without a trained LM head).
- **Final LayerNorm**: the read-out includes the final norm's *affine* part and, for LayerNorm, its centring: with
  TransformerLens weight processing (the default of ``load_model``) they are already folded into ``W_U``; on an
  unprocessed model they are folded here (``(I - 11^T/d) diag(w) W_U``). The per-token division by the residual's
  norm has no parameter-space counterpart and is omitted: it scales a whole row by a positive number, so ranks and
  top-k within a row are exact, magnitudes across rows are not.
- **Biases** are left out of parameter projections (they do not depend on the input token), except in the QK form,
  whose query and key biases change which key wins (see :func:`mechwork.projection.project`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, ShapeError


def has_lm_head(model: Any) -> bool:
    """Whether the model's unembedding is a trained language-model head (``mechwork.core.model_kind``)."""
    from ..core.kind import model_kind

    return model_kind(model).lm_head


def require_lm_head(model: Any, what: str) -> None:
    """Refuse (``UnsupportedModelError``) to read ``W_U`` of a model whose checkpoint has no trained LM head."""
    from ..core.errors import UnsupportedModelError
    from ..core.kind import architecture

    if not has_lm_head(model):
        name = getattr(model, "mechwork_spec", None) or architecture(model) or type(model).__name__
        raise UnsupportedModelError(
            f"{what} needs the model's unembedding, but {name} has no trained LM head (its checkpoint has none: "
            "W_U would be meaningless). Read outputs through the embedding instead with output='embed' (tied "
            "convention), or use input-side projections (QK forms, neuron keys)."
        )


def embedding(model: Any) -> Tensor:
    """``W_E`` ``[vocab, d_model]`` (tied models without a separate ``W_E`` fall back to ``W_U^T``)."""
    W_E = getattr(model, "W_E", None)
    if isinstance(W_E, Tensor):
        return W_E.detach()
    if bool(getattr(model.cfg, "tie_word_embeddings", False)) and has_lm_head(model):
        return unembedding(model).T
    from ..core.kind import architecture

    raise ConfigError(
        f"this model exposes no token embedding W_E and its embeddings are not tied "
        f"(architecture {architecture(model) or '?'}); input-side projections (QK forms, neuron keys) need W_E"
    )


@torch.no_grad()
def effective_embedding(model: Any, layer: int, *, batch: int = 2048) -> Tensor:
    """Each token's residual stream entering block ``layer`` when it stands alone after BOS (position 1),
    centred and scaled as the block's input LayerNorm would: ``[vocab, d_model]``.

    The context-free "effective embedding" of circuit work (for layer 1 of a model with MLPs: ``W_E`` + what block
    0 adds): later heads read the token through everything below them, not through ``W_E`` alone.
    """
    from ..core.hooks import capture, model_device
    from ..core.prompts import bos_id, prepends_bos

    check_layer(model, layer, "effective embedding")
    size = n(model, "d_vocab")
    bos = bos_id(model) if prepends_bos(model) else None
    name = f"blocks.{layer}.hook_resid_pre"
    out = []
    for s in range(0, size, batch):
        ids = torch.arange(s, min(size, s + batch), device=model_device(model))
        toks = ids[:, None] if bos is None else torch.stack([torch.full_like(ids, int(bos)), ids], 1)
        out.append(capture(model, toks, [name])[name][:, -1].float())
    x = torch.cat(out)
    if getattr(model.cfg, "normalization_type", "LN") in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    return x * (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def input_embedding(model: Any, layer: int, input: str) -> Tensor:
    """The input side of a projection at ``layer``: ``W_E`` (``input="embed"``) or :func:`effective_embedding`."""
    if input == "embed":
        return embedding(model)
    if input == "effective":
        return effective_embedding(model, layer).to(embedding(model).dtype)
    raise ConfigError(f"input must be 'embed' (W_E) or 'effective' (context-free residual at the layer), got {input!r}")


def _ln_final_weight(model: Any) -> tuple[Tensor | None, bool]:
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return None, False
    w = getattr(ln, "w", None)
    if not isinstance(w, Tensor):
        w = getattr(ln, "weight", None)
    centre = type(ln).__name__ in ("LayerNorm", "LayerNormPre") or "LayerNorm" in type(ln).__name__
    if getattr(model.cfg, "normalization_type", "LN") in ("RMS", "RMSPre"):
        centre = False
    return (w.detach() if isinstance(w, Tensor) else None), centre


def unembedding(model: Any, *, output: str = "unembed") -> Tensor:
    """The read-out ``[d_model, vocab]`` with the final norm's affine part and centring folded in.

    ``output="embed"`` gives ``W_E^T`` (tied convention) instead; ``"unembed"`` refuses on headless models.
    """
    if output == "embed":
        return embedding(model).T
    if output != "unembed":
        raise ConfigError(f"output must be 'unembed' or 'embed', got {output!r}")
    require_lm_head(model, "reading outputs in vocabulary space")
    W_U = model.W_U.detach()
    w, centre = _ln_final_weight(model)
    if w is not None and w.shape == (W_U.shape[0],):
        W_U = w[:, None] * W_U
    if w is not None and centre:
        W_U = W_U - W_U.mean(0, keepdim=True)
    return W_U


def n(model: Any, key: str) -> int:
    return int(getattr(model.cfg, key))


def check_layer(model: Any, layer: Any, what: str) -> int:
    n_layers = n(model, "n_layers")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ConfigError(f"{what} needs layer in [0, {n_layers}) (the model has {n_layers} layers), got {layer!r}")
    return layer


def check_head(model: Any, layer: Any, head: Any, what: str) -> tuple[int, int]:
    layer = check_layer(model, layer, what)
    n_heads = n(model, "n_heads")
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
        raise ConfigError(f"{what} needs head in [0, {n_heads}) (layer {layer} has {n_heads} heads), got {head!r}")
    return layer, head


def check_neuron(model: Any, layer: Any, neuron: Any, what: str) -> tuple[int, int]:
    if getattr(model.cfg, "attn_only", False):
        raise ConfigError(f"{what}: this model has no MLPs (attention-only), so it has no neurons")
    layer = check_layer(model, layer, what)
    d_mlp = n(model, "d_mlp")
    if isinstance(neuron, bool) or not isinstance(neuron, int) or not 0 <= neuron < d_mlp:
        raise ConfigError(f"{what} needs neuron in [0, {d_mlp}) (d_mlp = {d_mlp}), got {neuron!r}")
    return layer, neuron


def check_finite(t: Tensor, what: str) -> Tensor:
    from ..core.errors import NonFiniteError

    if not torch.isfinite(t).all():
        raise NonFiniteError(f"{what} contains NaN or inf values")
    return t


class Tokens:
    """Token ids <-> strings through the model's own tokenizer, decoding only the ids asked for."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.size = n(model, "d_vocab")

    def names(self, ids: Sequence[int] | Tensor) -> list[str]:
        from ..core.prompts import str_tokens

        ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        return list(str_tokens(self.model, torch.tensor(ids, dtype=torch.long))) if ids else []  # type: ignore[arg-type]

    def id(self, token: int | str) -> int:
        """A token id from an id or a string that is exactly one token (error with close names otherwise)."""
        if isinstance(token, bool):
            raise ConfigError(f"token must be an id or a string, got {token!r}")
        if isinstance(token, int):
            if not 0 <= token < self.size:
                raise ConfigError(f"token id {token} outside the vocabulary [0, {self.size})")
            return token
        if not isinstance(token, str):
            raise ConfigError(f"token must be an id or a string, got {type(token).__name__}")
        if getattr(self.model, "tokenizer", None) is None:
            raise ConfigError(f"this model has no tokenizer: give token ids, not {token!r}")
        try:
            i = int(self.model.to_single_token(token))
            if self.names([i])[0] == token:  # not an <unk> stand-in
                return i
        except Exception:  # noqa: BLE001 - TransformerLens raises AssertionError/ValueError here
            pass
        names = self.names(range(self.size))
        if token in names:
            return names.index(token)
        close = difflib.get_close_matches(token, names, n=5)
        hint = f" Close tokens: {', '.join(repr(c) for c in close)}." if close else ""
        raise ConfigError(f"{token!r} is not a single token of this model's vocabulary.{hint}")

    def ids(self, tokens: Sequence[int | str] | Tensor) -> list[int]:
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist()
        if isinstance(tokens, (str, int)):
            tokens = [tokens]
        out = [self.id(t) for t in tokens]
        if not out:
            raise ConfigError("no tokens given")
        return out


def check_width(vec: Tensor, width: int, what: str) -> Tensor:
    if not isinstance(vec, Tensor):
        vec = torch.as_tensor(vec)
    if not vec.is_floating_point():
        raise ShapeError(f"{what} must be a floating-point tensor, got dtype {vec.dtype}")
    if vec.ndim == 1:
        vec = vec[None]
    if vec.ndim != 2 or vec.shape[-1] != width:
        raise ShapeError(f"{what} must have shape [{width}] or [n, {width}], got {tuple(vec.shape)}")
    if vec.shape[0] == 0:
        raise ShapeError(f"{what} is empty")
    return check_finite(vec, what)
