"""Which token positions a steerer edits, expressed as **absolute** positions so that KV-cached decoding is right.

Under KV caching each decode step runs the model on the new token(s) only, at absolute position ``offset``
(the cache length). A rule written in relative positions (``token_indices=[-1]``, a mask over the prompt)
then either misses the generated tokens (the CAA off-by-one: nothing is added at the first generated token)
or indexes past the chunk (the steering-vectors ``IndexError``). Here every hook asks a shared
:class:`PositionState` for the absolute positions of the chunk it sees, ``offset + arange(chunk_len)``, and the
rule is evaluated on those:

``"all"``        every position, prompt and generated (LinEAS, Linear-AcT, ITI, LoFiT default);
``"prompt"``     columns before the prompt's width (left padding included: those are masked anyway);
``"generated"``  columns from the prompt's width on (the first generated token included);
``list[int]``    the given absolute columns (negative numbers are refused: they are relative);
``Bool[batch, pos]`` mask over absolute columns of the (left-padded) prompt + generation layout; columns past
                 the mask's width are not steered (never an ``IndexError``).

The offset is learnt from layer 0's attention scores (key length minus query length), which every
TransformerLens forward pass produces, cached or not; mechwork's own :func:`~mechwork.steering.generate`
also sets it explicitly. The prompt width is set by ``generate`` or, in a foreign generation loop, by the
first forward pass at offset 0 inside the ``apply`` block. Limit: in a foreign KV-cached loop (e.g.
``model.generate`` inside ``steerer.apply``), sites that fire before layer 0's attention scores (``hook_embed``,
``resid_pre.0``, ``ln1_normalized.0``, layer 0's q/k/v) see the previous chunk's offset; use
:func:`~mechwork.steering.generate` (or ``positions="all"``) for rules at those sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, ShapeError

RULES = ("all", "prompt", "generated")


def check_positions(positions: Any) -> Any:
    """Validate a positions rule; returns it normalised (a str, a tuple of ints, or a bool tensor)."""
    if positions is None:
        return "all"
    if isinstance(positions, str):
        if positions not in RULES:
            raise ConfigError(
                f"positions must be one of {RULES}, a list of absolute positions or a bool mask, got {positions!r}"
            )
        return positions
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.ndim != 2:
            raise ShapeError(f"a positions mask must be [batch, pos] (absolute columns), got {tuple(positions.shape)}")
        return positions
    try:
        idx = tuple(int(p) for p in positions)
    except TypeError as e:
        raise ConfigError(
            f"positions must be 'all', 'prompt', 'generated', a list of ints or a bool mask, got {positions!r}"
        ) from e
    if any(p < 0 for p in idx):
        raise ConfigError(
            f"positions {list(idx)} contain negative numbers; give absolute positions (0 = first token, BOS included): "
            "relative positions move during KV-cached generation"
        )
    return idx


@dataclass
class PositionState:
    """Shared by the hooks of one ``apply`` block: where the current chunk starts and how wide the prompt is."""

    offset: int = 0
    prompt_len: int | None = None
    explicit: bool = False  # set by mechwork's generate: the tracker then only checks

    def observe(self, k_len: int, q_len: int) -> None:
        if not self.explicit:
            self.offset = k_len - q_len
            if self.prompt_len is None and self.offset == 0:
                self.prompt_len = q_len


def tracker_hook(state: PositionState) -> Any:
    """Hook for ``blocks.0.attn.hook_attn_scores`` ``[batch, head, q, k]``: records the chunk's offset."""

    def fn(scores: Tensor, hook: Any = None) -> None:
        state.observe(int(scores.shape[-1]), int(scores.shape[-2]))

    return fn


def position_mask(rule: Any, state: PositionState, batch: int, chunk: int, device: torch.device) -> Tensor | None:
    """``Bool[batch, chunk]`` of the positions to edit in the current chunk, or ``None`` for every position."""
    if isinstance(rule, str) and rule == "all":
        return None
    cols = torch.arange(state.offset, state.offset + chunk, device=device)
    if isinstance(rule, str):
        width = state.prompt_len if state.prompt_len is not None else state.offset + chunk
        keep = cols < width if rule == "prompt" else cols >= width
        return keep[None].expand(batch, chunk)
    if isinstance(rule, Tensor):
        m = rule.to(device)
        if m.shape[0] not in (1, batch):
            raise ShapeError(f"positions mask has {m.shape[0]} rows but the batch has {batch}")
        out = torch.zeros(m.shape[0], chunk, dtype=torch.bool, device=device)
        inside = cols < m.shape[1]
        out[:, inside] = m[:, cols[inside]]
        return out.expand(batch, chunk)
    wanted = torch.tensor(rule, device=device, dtype=torch.long)
    return torch.isin(cols, wanted)[None].expand(batch, chunk)


def describe(rule: Any) -> Any:
    """JSON-friendly form of a rule (masks are summarised: they belong to one batch, not to the artefact)."""
    if isinstance(rule, Tensor):
        return f"mask{list(rule.shape)}"
    return list(rule) if isinstance(rule, tuple) else rule
