"""What a latent writes: its decoder direction read through the unembedding and against the token embeddings.

``W_dec[j] @ W_U`` gives the direct effect of the latent on every output logit (the tokens it promotes and
suppresses), ignoring the final LayerNorm's per-token scale (its affine part is folded into ``W_U`` when weights
are processed). ``cos(W_dec[j], W_E[t])`` is the embedding-space reading (the input tokens whose embedding the
direction resembles). Both need a residual-stream site (width ``d_model``); an encoder without a language-model
head has no unembedding to read through, and is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

CHUNK = 512  # latents projected at a time (bounds the [chunk, vocab] matrix)


@dataclass
class LogitEffects:
    """Top tokens of every latent's decoder direction.

    Attributes
    ----------
    up_ids, up_vals : [d_sae, n]
        Most promoted tokens (largest ``W_dec[j] @ W_U``) and their logit effect.
    down_ids, down_vals : [d_sae, n]
        Most suppressed tokens (most negative effect).
    emb_ids, emb_vals : [d_sae, n] or None
        Tokens whose embedding has the largest cosine with the direction.
    """

    up_ids: Int[Tensor, "d_sae n"]
    up_vals: Float[Tensor, "d_sae n"]
    down_ids: Int[Tensor, "d_sae n"]
    down_vals: Float[Tensor, "d_sae n"]
    emb_ids: Int[Tensor, "d_sae n"] | None
    emb_vals: Float[Tensor, "d_sae n"] | None


def unavailable_reason(model: Any, d_in: int) -> str | None:
    """Why logit effects cannot be computed for an SAE of width ``d_in`` on ``model`` (``None`` if they can)."""
    if model is None:
        return "no model given (logit effects need the model's unembedding)"
    arch = str(getattr(model.cfg, "original_architecture", "") or "")
    if getattr(model, "mechwork_headless", False) or "Bert" in arch or "Encoder" in type(model).__name__:
        return f"the model ({arch or type(model).__name__}) has no language-model head: no unembedding to read through"
    if not hasattr(model, "W_U"):
        return "the model exposes no unembedding W_U"
    if int(d_in) != int(model.cfg.d_model):
        return (
            f"the SAE reads width {d_in}, not the residual stream (d_model={int(model.cfg.d_model)}); "
            "logit effects need a residual-stream, attention-output or MLP-output site"
        )
    return None


@torch.no_grad()
def direction_logits(model: Any, directions: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
    """Direct logit effect of residual-stream directions: ``directions @ W_U``."""
    W_U = model.W_U
    return directions.to(W_U.device, W_U.dtype) @ W_U


@torch.no_grad()
def logit_effects(model: Any, W_dec: Float[Tensor, "d_sae d_model"], n: int = 10) -> LogitEffects:
    """Top ``n`` promoted / suppressed tokens and embedding neighbours of every decoder row."""
    W_E = getattr(model, "W_E", None)
    emb = None if W_E is None else torch.nn.functional.normalize(W_E.detach().float(), dim=-1)
    out: dict[str, list[Tensor]] = {k: [] for k in ("ui", "uv", "di", "dv", "ei", "ev")}
    for lo in range(0, W_dec.shape[0], CHUNK):
        d = W_dec[lo : lo + CHUNK].detach().float()
        lg = direction_logits(model, d).float()
        k = min(n, lg.shape[1])
        up = lg.topk(k, dim=-1)
        down = (-lg).topk(k, dim=-1)
        out["ui"].append(up.indices.cpu())
        out["uv"].append(up.values.cpu())
        out["di"].append(down.indices.cpu())
        out["dv"].append(-down.values.cpu())
        if emb is not None:
            cos = torch.nn.functional.normalize(d.to(emb.device), dim=-1) @ emb.T
            e = cos.topk(min(n, cos.shape[1]), dim=-1)
            out["ei"].append(e.indices.cpu())
            out["ev"].append(e.values.cpu())
    cat = {k: torch.cat(v) if v else None for k, v in out.items()}
    return LogitEffects(cat["ui"], cat["uv"], cat["di"], cat["dv"], cat["ei"], cat["ev"])  # type: ignore[arg-type]
