"""Sparse TopK encode/decode with hand-written backward passes whose arithmetic involves only the selected latents.

A TopK SAE step has one unavoidable dense operation: the encoder pre-activations ``x W_enc + b_enc``
(``[N, d_sae]``). After the top-k selection the gradient arithmetic is ``O(N k d)`` rather than ``O(N d_sae d)``:

* the decoder is a gather of ``k`` rows per token (``embedding_bag``) instead of a ``[N, d_sae] x
  [d_sae, d_in]`` matmul;
* the decoder-weight gradient is a segment sum over the tokens that selected each latent
  (``embedding_bag`` over the output gradient, tokens sorted by latent), not a dense outer product;
* the encoder-weight and encoder-bias gradients are the same segment sums over the encoder input;
* the gradient of the selected values is a per-row dot product (the per-sample-weight backward of
  ``embedding_bag``).

What stays dense, and so still touches every latent: the top-k selection scans all ``d_sae`` pre-activations;
the weight and bias gradients are dense tensors (``[d_sae, d_in]``, zero in the rows no token selected); the
optimizer step and the decoder renormalisation update every latent.

The encoder is stored row-major as ``W_enc_T [d_sae, d_in]`` so that these gathers read contiguous rows.
:func:`topk_encode` and :func:`decode` with ``sparse=False`` are the plain-autograd reference the tests compare
against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable


def segment_sum(
    idx: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], rows: Float[Tensor, "n d"], n_latents: int
) -> Float[Tensor, "m d"]:
    """``out[j] = sum over (i, m) with idx[i, m] == j of weights[i, m] * rows[i]``, without a dense ``[n, m]``.

    Implemented as one ``embedding_bag`` over ``rows`` with the (token, slot) pairs sorted by latent.
    """
    n, k = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat)
    tokens = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=n_latents)
    offsets = torch.cumsum(counts, 0) - counts
    w = weights.reshape(-1)[order].to(rows.dtype)
    return F.embedding_bag(tokens, rows, offsets=offsets, per_sample_weights=w, mode="sum")


def gather_dot(
    idx: Int[Tensor, "n k"], table: Float[Tensor, "m d"], rows: Float[Tensor, "n d"]
) -> Float[Tensor, "n k"]:
    """``out[i, m] = table[idx[i, m]] . rows[i]`` without materialising the gathered ``[n, k, d]`` tensor.

    This is exactly the per-sample-weight gradient of ``embedding_bag``, so we let its (fused) backward do it.
    """
    n, k = idx.shape
    psw = torch.zeros(idx.shape, dtype=table.dtype, device=table.device, requires_grad=True)
    with torch.enable_grad():
        out = F.embedding_bag(idx, table.detach(), per_sample_weights=psw, mode="sum")
        (grad,) = torch.autograd.grad(out, psw, rows.to(out.dtype))
    return grad


class SparseDecode(torch.autograd.Function):
    """``x_hat = sum_m vals[:, m] * W_dec[idx[:, m]] + b_dec`` with a backward that touches only selected rows."""

    @staticmethod
    def forward(ctx, vals: Tensor, idx: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:  # type: ignore[override]
        out = F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")
        ctx.save_for_backward(vals, idx, W_dec)
        return out + b_dec

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        vals, idx, W_dec = ctx.saved_tensors
        g = g.contiguous()
        g_vals = gather_dot(idx, W_dec, g).to(vals.dtype) if ctx.needs_input_grad[0] else None
        g_W = segment_sum(idx, vals, g.to(W_dec.dtype), W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        g_b = g.sum(0) if ctx.needs_input_grad[3] else None
        return g_vals, None, g_W, g_b


_WORKSPACE: dict[tuple, Tensor] = {}
_MAX_BUFFERS = 4


def _pre_acts(x_in: Tensor, W_enc_T: Tensor, b_enc: Tensor) -> Tensor:
    """Dense pre-activations ``x_in @ W_enc_T.T + b_enc``.

    On CPU the ``[n, d_sae]`` result goes into a reused buffer: a fresh allocation of that size is a new
    ``mmap`` whose page faults cost about as much as the bias add (this tensor is never saved for backward,
    so one buffer per shape suffices). Elsewhere (CUDA, with or without bf16 autocast) it is a plain addmm.
    """
    if x_in.device.type != "cpu" or torch.is_autocast_enabled():
        return torch.addmm(b_enc, x_in, W_enc_T.t())
    key = (x_in.shape[0], W_enc_T.shape[0], x_in.dtype)
    buf = _WORKSPACE.pop(key, None)
    if buf is None:
        buf = torch.empty(key[:2], dtype=x_in.dtype)
        while len(_WORKSPACE) >= _MAX_BUFFERS:  # a sweep over widths keeps one buffer per width
            _WORKSPACE.pop(next(iter(_WORKSPACE)))
    _WORKSPACE[key] = buf  # most recently used last
    torch.mm(x_in, W_enc_T.to(x_in.dtype).t(), out=buf)
    return buf.add_(b_enc.to(x_in.dtype))


def _select(
    pre: Tensor, k: int, dead: Tensor | None, k_aux: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    if dead is None or k_aux <= 0:
        return vals.relu(), idx, None, None
    # the main selection is done, so a buffer without autograd history can be overwritten in place
    fill = pre.masked_fill if pre.requires_grad else pre.masked_fill_
    masked = fill(~dead, float("-inf"))
    aux_vals, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)
    # masked entries come back as -inf when fewer than k_aux latents are dead: relu maps them to 0
    return vals.relu(), idx, aux_vals.relu(), aux_idx


class SparseTopKEncode(torch.autograd.Function):
    """``topk(relu)`` of ``x_in @ W_enc_T.T + b_enc``, optionally also the top ``k_aux`` dead latents (AuxK).

    Returns ``(vals, idx, aux_vals, aux_idx)``; the aux pair is empty (``[n, 0]``) without dead latents.
    Backward computes the gradients of ``W_enc_T``, ``b_enc`` and ``x_in`` from the selected entries only.
    """

    @staticmethod
    def forward(ctx, x_in: Tensor, W_enc_T: Tensor, b_enc: Tensor, k: int, dead: Tensor | None, k_aux: int):  # type: ignore[override]
        vals, idx, aux_vals, aux_idx = _select(_pre_acts(x_in, W_enc_T, b_enc), k, dead, k_aux)
        if aux_vals is None:
            aux_vals = vals.new_zeros((vals.shape[0], 0))
            aux_idx = idx.new_zeros((idx.shape[0], 0))
        ctx.save_for_backward(x_in, W_enc_T, vals, idx, aux_vals, aux_idx)
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    @once_differentiable
    def backward(ctx, g_vals: Tensor, _g_idx, g_aux: Tensor, _g_aux_idx):  # type: ignore[override]
        x_in, W_enc_T, vals, idx, aux_vals, aux_idx = ctx.saved_tensors
        if g_vals is None:
            g_vals = torch.zeros_like(vals)
        g_pre = g_vals * (vals > 0)  # ReLU after the selection
        if aux_idx.shape[1]:
            g_aux = torch.zeros_like(aux_vals) if g_aux is None else g_aux
            g_pre = torch.cat([g_pre, g_aux * (aux_vals > 0)], dim=1)
            idx = torch.cat([idx, aux_idx], dim=1)
        m = W_enc_T.shape[0]
        g_x = g_W = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(idx, W_enc_T, per_sample_weights=g_pre.to(W_enc_T.dtype), mode="sum").to(x_in.dtype)
        if ctx.needs_input_grad[1]:
            g_W = segment_sum(idx, g_pre, x_in.to(W_enc_T.dtype), m)
        if ctx.needs_input_grad[2]:
            g_b = torch.bincount(idx.reshape(-1), weights=g_pre.reshape(-1).float(), minlength=m).to(W_enc_T.dtype)
        return g_x, g_W, g_b, None, None, None


def topk_encode(
    x_in: Float[Tensor, "n d"],
    W_enc_T: Float[Tensor, "m d"],
    b_enc: Float[Tensor, " m"],
    k: int,
    dead: Bool[Tensor, " m"] | None = None,
    k_aux: int = 0,
    *,
    sparse: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """TopK selection ``(vals, idx, aux_vals, aux_idx)`` of ``x_in @ W_enc_T.T + b_enc``.

    ``sparse=True`` uses :class:`SparseTopKEncode` (backward through the selected entries only); ``False``
    is the plain-autograd reference with the same result.
    """
    if sparse:
        return SparseTopKEncode.apply(x_in, W_enc_T, b_enc, k, dead, k_aux)
    pre = x_in @ W_enc_T.to(x_in.dtype).t() + b_enc.to(x_in.dtype)
    vals, idx, aux_vals, aux_idx = _select(pre, k, dead, k_aux)
    if aux_vals is None:
        aux_vals, aux_idx = vals[:, :0], idx[:, :0]
    return vals, idx, aux_vals, aux_idx


def decode(
    vals: Float[Tensor, "n k"],
    idx: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "m d"],
    b_dec: Float[Tensor, " d"],
    *,
    sparse: bool = True,
) -> Float[Tensor, "n d"]:
    """``sum_m vals[:, m] W_dec[idx[:, m]] + b_dec``: :class:`SparseDecode`, or (``sparse=False``) a dense
    ``[n, d_sae]`` code times ``W_dec`` (the reference)."""
    if sparse:
        return SparseDecode.apply(vals, idx, W_dec, b_dec)
    f = torch.zeros(vals.shape[0], W_dec.shape[0], dtype=vals.dtype, device=vals.device).scatter(1, idx, vals)
    return f @ W_dec.to(f.dtype) + b_dec
