"""A transformer site as a function over positions: windows for SAE neural operators, and what their concepts are.

``position_windows(model, site)`` cuts the activations of held-out generated text into windows of ``window``
consecutive positions: samples ``[n, d_model, window]`` (channels = the residual stream, grid = positions), each
position with its ground-truth tag from the generated language (``bos``, ``pronoun``, ``ioi:answer`` ...).
:func:`tag_alignment` then says which tags each concept channel's code fires on (precision, recall, F1 over
all (window, position) cells), the same score the latent scan gives a TopK SAE's latents.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, DataError
from ..core.hooks import capture
from ..core.sites import site as resolve_site
from .evaluate import token_batches


@torch.no_grad()
def position_windows(
    model: Any, site: str, *, n_windows: int = 4000, window: int = 16, stride: int = 8, seed: int = 0
) -> tuple[Float[Tensor, "n d window"], list[list[str]]]:
    """``(x [n, d_model, window], tags [n][window])`` from held-out generated text at ``site``.

    Windows lie inside one document and start at position 1 (the ``<bos>`` position, whose activation is an
    outlier, is left out), with ``stride`` positions between starts.
    """
    if window < 2 or stride < 1 or n_windows < 1:
        raise ConfigError(
            f"window >= 2, stride >= 1 and n_windows >= 1 are required, got {window}, {stride}, {n_windows}"
        )
    s = resolve_site(model, site)
    if s.d is None:
        raise DataError(f"site {s.name} has no fixed width per position; windows need [batch, pos, d] activations")
    xs: list[Tensor] = []
    tags: list[list[str]] = []
    have = 0
    for tokens, mask, docs in token_batches(model, None, n_tokens=10**9, batch_size=32, seed=seed):
        acts = capture(model, tokens, [s.name])[s.name]
        if acts.ndim != 3:
            raise DataError(
                f"site {s.name} gives activations of shape {tuple(acts.shape)}; windows need [batch, pos, d]"
            )
        for b in range(tokens.shape[0]):
            length = int(mask[b].sum())  # positions 0..length-1 carry a next-token target
            doc_tags = docs[b].tags
            for start in range(1, length - window + 1, stride):
                xs.append(acts[b, start : start + window].t().contiguous())
                tags.append([doc_tags[p - 1] for p in range(start, start + window)])
                have += 1
                if have >= n_windows:
                    return torch.stack(xs).float(), tags
    raise DataError("the corpus ran out before enough windows were cut")  # pragma: no cover


def tag_alignment(codes: Float[Tensor, "n k window"], tags: list[list[str]], *, min_count: int = 5) -> list[dict]:
    """Best tag of every concept channel that fires: ``{channel, tag, precision, recall, f1, freq}``.

    A channel "fires" at a cell (window, position) when its code is positive there; precision is the share of
    its firing cells that carry the tag, recall the share of the tag's cells where it fires.
    """
    n, k, w = codes.shape
    if len(tags) != n or any(len(t) != w for t in tags):
        raise ConfigError(f"tags must be {n} lists of {w} strings (one per window position)")
    flat_tags = [t for row in tags for t in row]
    names = sorted(set(flat_tags))
    tag_id = torch.tensor([names.index(t) for t in flat_tags])
    fires = (codes > 0).permute(0, 2, 1).reshape(-1, k).double()  # [cells, k]
    onehot = torch.nn.functional.one_hot(tag_id, len(names)).double()
    both = fires.t() @ onehot  # [k, tags]
    n_fire = fires.sum(0)
    n_tag = onehot.sum(0)
    prec = both / n_fire.clamp_min(1)[:, None]
    rec = both / n_tag.clamp_min(1)[None, :]
    f1 = 2 * prec * rec / (prec + rec).clamp_min(1e-12)
    rows = []
    for c in range(k):
        if n_fire[c] < min_count:
            continue
        j = int(f1[c].argmax())
        rows.append(
            {
                "channel": c,
                "tag": names[j],
                "precision": float(prec[c, j]),
                "recall": float(rec[c, j]),
                "f1": float(f1[c, j]),
                "freq": float(n_fire[c] / fires.shape[0]),
            }
        )
    return rows


__all__ = ["position_windows", "tag_alignment"]
