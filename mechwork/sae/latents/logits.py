"""What a latent writes: its decoder direction read in vocabulary space through :mod:`mechwork.projection`.

``project(model, W_dec, site=site)`` reads each decoder row as a direction written at the SAE's site: residual-width
sites go straight through the unembedding (final LayerNorm's affine part and centring folded in), ``mlp_post``
through ``W_out`` first, ``z``/``result`` through ``W_O``. The top promoted and suppressed tokens are the largest and
most negative direct logit effects; the embedding-space reading (``output="embed"``) gives the tokens whose
embedding the direction points along. Models without a trained LM head (encoders) and sites that cannot be read
are refused by the projection with the reason, which the dashboard shows instead of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ...core.errors import MechworkError


@dataclass
class LogitEffects:
    """Top tokens of every latent's decoder direction.

    Attributes
    ----------
    up_ids, up_vals : [d_sae, n]
        Most promoted tokens (largest direct logit effect) and the effect.
    down_ids, down_vals : [d_sae, n]
        Most suppressed tokens (most negative effect).
    emb_ids, emb_vals : [d_sae, n] or None
        Tokens whose embedding has the largest dot product with the written direction.
    """

    up_ids: Int[Tensor, "d_sae n"]
    up_vals: Float[Tensor, "d_sae n"]
    down_ids: Int[Tensor, "d_sae n"]
    down_vals: Float[Tensor, "d_sae n"]
    emb_ids: Int[Tensor, "d_sae n"] | None
    emb_vals: Float[Tensor, "d_sae n"] | None


@torch.no_grad()
def logit_effects(
    model: Any, W_dec: Float[Tensor, "d_sae d_in"], site: str | None, n: int = 10
) -> tuple[LogitEffects | None, str | None]:
    """Top ``n`` promoted / suppressed tokens and embedding neighbours of every decoder row.

    Returns ``(effects, None)``, or ``(None, reason)`` when the model or site cannot be read in vocabulary space.
    """
    from ...projection import project

    if model is None:
        return None, "no model given (logit effects need the model's unembedding)"
    W = W_dec.detach()
    try:
        proj = project(model, W, site=site, mode="write")
        up_v, up_i = proj.top_rows(n)
        down_v, down_i = proj.top_rows(n, largest=False)
    except MechworkError as e:
        return None, str(e)
    try:
        emb_v, emb_i = project(model, W, site=site, mode="write", output="embed").top_rows(n)
    except MechworkError:
        emb_v = emb_i = None
    emb_i, emb_v = (None, None) if emb_i is None or emb_v is None else (emb_i.cpu(), emb_v.cpu())
    return LogitEffects(up_i.cpu(), up_v.cpu(), down_i.cpu(), down_v.cpu(), emb_i, emb_v), None
