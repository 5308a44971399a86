"""Packing documents into context windows: back to back (``pack``) or one per padded window (``pad_windows``).

Every row of a window records the token id, the index of the document it came from and its position in that
document, so that an activation can always be traced back to its text (and, for a task, its label).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import DataError


@dataclass
class Windows:
    """A batch of packed context windows.

    Attributes
    ----------
    tokens : Int[Tensor, "batch pos"]
        Token ids; every window has ``context`` positions except possibly the last window of a finite source.
    doc : Int[Tensor, "batch pos"]
        Index of the source document each token came from (``-1`` for a BOS inserted at a window start).
    doc_pos : Int[Tensor, "batch pos"]
        Position of the token in its document (``0`` is the document's BOS when one was prepended; ``-1`` for
        inserted BOS tokens).
    """

    tokens: Tensor
    doc: Tensor
    doc_pos: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def pack(
    docs: Iterable[Tensor], context: int, *, bos_id: int | None, batch: int = 1, refill: int = 64
) -> Iterator[Windows]:
    """Pack documents into windows of ``context`` tokens, ``batch`` windows at a time.

    Parameters
    ----------
    docs : iterable of Int[Tensor, "n"]
        Documents in order.
    context : int
        Tokens per window.
    bos_id : int or None
        With an id, every document starts with BOS (prepended when its first token is not BOS) and every window
        starts with BOS (inserted when the window begins inside a document, which then continues after it).
        ``None`` concatenates documents as they are.
    batch : int
        Windows per yielded :class:`Windows`; the last yield may hold fewer, and a final window shorter than
        ``context`` is yielded on its own.

    Yields
    ------
    Windows
    """
    if context < (2 if bos_id is not None else 1):
        raise DataError(f"context must be at least {2 if bos_id is not None else 1} tokens, got {context}")
    tok_parts: list[Tensor] = []
    doc_parts: list[Tensor] = []
    pos_parts: list[Tensor] = []
    have = 0
    doc_iter = iter(docs)
    n_doc = 0
    exhausted = False
    buf_t = buf_d = buf_p = torch.empty(0, dtype=torch.long)
    out: list[tuple[Tensor, Tensor, Tensor]] = []

    def flush() -> Iterator[Windows]:
        if out:
            yield Windows(
                torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]), torch.stack([o[2] for o in out])
            )
            out.clear()

    while True:
        # refill the buffer so that at least one full window is available (or the source is exhausted)
        if buf_t.numel() < context and not exhausted:
            tok_parts, doc_parts, pos_parts = [buf_t], [buf_d], [buf_p]
            have = buf_t.numel()
            while have < context * refill:
                d = next(doc_iter, None)
                if d is None:
                    exhausted = True
                    break
                if bos_id is not None and (d.numel() == 0 or int(d[0]) != bos_id):
                    d = torch.cat([torch.tensor([bos_id], dtype=torch.long), d])
                tok_parts.append(d)
                doc_parts.append(torch.full_like(d, n_doc))
                pos_parts.append(torch.arange(d.numel(), dtype=torch.long))
                have += d.numel()
                n_doc += 1
            buf_t, buf_d, buf_p = torch.cat(tok_parts), torch.cat(doc_parts), torch.cat(pos_parts)
        if buf_t.numel() == 0:
            break
        if bos_id is not None and int(buf_t[0]) != bos_id:
            take = min(context - 1, buf_t.numel())
            w_t = torch.cat([torch.tensor([bos_id]), buf_t[:take]])
            w_d = torch.cat([torch.tensor([-1]), buf_d[:take]])
            w_p = torch.cat([torch.tensor([-1]), buf_p[:take]])
        else:
            take = min(context, buf_t.numel())
            w_t, w_d, w_p = buf_t[:take], buf_d[:take], buf_p[:take]
        if w_t.numel() < context and not exhausted:
            continue  # refill first (the buffer ran short of a full window)
        buf_t, buf_d, buf_p = buf_t[take:], buf_d[take:], buf_p[take:]
        if w_t.numel() < context:  # the last, short window goes out on its own
            yield from flush()
            out.append((w_t, w_d, w_p))
            yield from flush()
            break
        out.append((w_t, w_d, w_p))
        if len(out) == batch:
            yield from flush()
    yield from flush()


def pad_windows(
    docs: Iterable[Tensor], context: int, *, bos_id: int | None, pad_id: int, batch: int = 1
) -> Iterator[Windows]:
    """One document per window, right-padded to ``context`` tokens, ``batch`` windows at a time.

    A causal model then computes every document's activations exactly as if it ran on that document alone
    (what a probe or an eraser fitted on task prompts needs), at the cost of the padding rows. Padding rows
    have ``doc == -1`` and ``doc_pos == -1``; with ``bos_id`` every document starts with BOS.

    Raises
    ------
    DataError
        A document longer than ``context`` (BOS included): it would have to be cut or split.
    """
    if context < 1:
        raise DataError(f"context must be at least 1 token, got {context}")
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    for i, d in enumerate(docs):
        if bos_id is not None and int(d[0]) != bos_id:
            d = torch.cat([torch.tensor([bos_id], dtype=torch.long), d])
        n = int(d.numel())
        if n > context:
            raise DataError(
                f"document {i} has {n} tokens{' (BOS included)' if bos_id is not None else ''} but packing='pad' puts one "
                f"document in a window of context={context}; pass a larger context or packing='concat'"
            )
        tok = torch.full((context,), pad_id, dtype=torch.long)
        tok[:n] = d
        doc = torch.full((context,), -1, dtype=torch.long)
        doc[:n] = i
        pos = torch.full((context,), -1, dtype=torch.long)
        pos[:n] = torch.arange(n)
        rows.append((tok, doc, pos))
        if len(rows) == batch:
            yield Windows(*(torch.stack(c) for c in zip(*rows)))
            rows = []
    if rows:
        yield Windows(*(torch.stack(c) for c in zip(*rows)))
