"""Per-position EAP: nodes are components at token positions, edges follow the residual stream within a position
and the attention of a head across positions.

A head at query position ``p`` reads its query at ``p`` and its keys and values at every ``p' <= p``. The EAP
gradient at a key/value input ``p'`` is a sum over the queries that attend to it, and splits exactly into one
term per query (first order, the same linearisation as EAP):

- value: ``dm/dv[p'] (via p) = A[p, p'] dm/dz[p]``;
- key: ``dm/dk[p'] (via p) = dm/dscores[p, p'] q[p] / scale`` with ``dm/dscores = A * (dm/dA - sum_p' A dm/dA)``
  and ``dm/dA[p, p'] = dm/dz[p] . v[p']``;

and an edge ``u@p' -> head@p`` through ``v`` (``k``) has weight ``J[p'] delta_u[p'] . dm/dv[p'] (via p)``, where
``J[p']`` is the Jacobian of the head's value (key) projection ``ln1(x) W`` at the clean residual (a
Jacobian-vector product). Summed over query positions these weights equal the position-summed EAP edge scores
(a test checks it). Queries, MLPs and the logits read at their own position. Each call checks that
``q k^T / scale`` reproduces the model's attention scores; models where it does not (rotary embeddings,
softcapping, grouped keys) are refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.hooks import run_with_hooks
from ..patching import eval_metric
from .graph import GraphEdge
from .structure import QKV, Slot, Structure, UnsupportedModelError


def eap_per_position(ctx: Any, st: Structure, delta: Tensor) -> tuple[list[GraphEdge], set[tuple[str, int]]]:
    """Edges ``(sender@p', receiver@p, kind, weight)`` of per-position EAP on the clean run, and the nodes used."""
    model = st.model
    cfg = model.cfg
    if getattr(cfg, "positional_embedding_type", "standard") == "rotary" or st.n_kv != st.n_heads:
        raise ConfigError("per-position edges support models without rotary embeddings or grouped keys/values")
    n = ctx.n
    store: dict[str, Tensor] = {}
    probes: dict[Slot, Tensor] = {}
    zprobe: dict[int, Tensor] = {}

    def provide(slot: Slot, act: Tensor) -> Tensor:
        heads = (st.receiver_heads(slot),) if slot[1] in QKV else ()
        p = torch.zeros(tuple(act.shape[:2]) + heads + (act.shape[-1],), device=act.device, dtype=act.dtype)
        probes[slot] = p.requires_grad_(True)
        return p

    def keep(name: str) -> Any:
        def hook(t: Tensor, hook: Any = None) -> None:
            store[name] = t

        return hook

    def zhook(L: int) -> Any:
        def hook(t: Tensor, hook: Any = None) -> Tensor:
            zprobe[L] = torch.zeros_like(t, requires_grad=True)
            return t + zprobe[L]

        return hook

    extra: list[tuple[str, Any]] = []
    for L in range(st.n_layers):
        pre = f"blocks.{L}."
        extra += [(pre + "hook_resid_pre", keep(f"x{L}")), (pre + "attn.hook_z", zhook(L))]
        extra += [(pre + f"attn.hook_{k}", keep(f"{k}{L}")) for k in ("q", "k", "v", "pattern")]
    with torch.enable_grad():
        logits = run_with_hooks(model, ctx.base_tokens, extra + st.hooks(provide, check=st.bridge))
        m = eval_metric(ctx.metric, logits, ctx.batch, "gradient pass")
        slots = list(probes)
        grads = torch.autograd.grad(m.sum(), [probes[s] for s in slots] + [zprobe[L] for L in range(st.n_layers)])
    ctx.account(n, None, 0, backward=True)
    g = dict(zip(slots, (x.detach() for x in grads[: len(slots)])))
    gz = [x.detach() for x in grads[len(slots) :]]
    dl = delta.float()
    edges: list[GraphEdge] = []
    used: set[tuple[str, int]] = set()

    def add(src: str, p_src: int, dst: str, p_dst: int, w: float, kind: str) -> None:
        if w != 0.0:
            edges.append(GraphEdge(f"{src}@{p_src}", f"{dst}@{p_dst}", w, kind))
            used.update({(src, p_src), (dst, p_dst)})

    ids = [s.id for s in st.senders]
    for slot, idx in st.slots.items():
        L, kind = slot
        k = st.n_inputs(slot)
        if kind in ("q", "mlp", "logits"):
            gs = g[slot].float()
            w = (
                torch.einsum("sbpd,bphd->shp", dl[:k], gs)
                if kind == "q"
                else torch.einsum("sbpd,bpd->sp", dl[:k], gs)[:, None]
            )
            w = (w / n).cpu()
            for hi, r in enumerate(idx):
                rec = st.receivers[r]
                for s in range(k):
                    for p in (w[s, hi].abs() > 0).nonzero().flatten().tolist():
                        add(ids[s], p, rec.node, p, float(w[s, hi, p]), kind)
            continue
        w = _kv_weights(st, L, kind, store, gz[L], dl[:k]) / n  # [senders, heads, p', p]
        w = w.cpu()
        for s, h, pk, pq in (w.abs() > 0).nonzero().tolist():
            add(ids[s], pk, st.receivers[idx[h]].node, pq, float(w[s, h, pk, pq]), kind)
    return edges, used


def _kv_weights(st: Structure, L: int, kind: str, store: dict[str, Tensor], gz: Tensor, dl: Tensor) -> Tensor:
    """``[senders, heads, key pos, query pos]`` weights of the edges into layer ``L``'s key or value inputs."""
    attn = st.model.blocks[L].attn
    q, k, v = (store[f"{x}{L}"].detach().float() for x in "qkv")  # [b, P, h, e]
    A = store[f"pattern{L}"].detach().float()  # [b, h, P, P]
    scale = float(getattr(attn, "attn_scale", math.sqrt(q.shape[-1])))
    mine = torch.einsum("bqhe,bkhe->bhqk", q, k) / scale
    future = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool, device=q.device).triu(1)
    # (the bridge's hook_attn_scores reports the softmaxed pattern, so the check compares patterns)
    err = float((torch.softmax(mine.masked_fill(future, float("-inf")), -1) - A).abs().max())
    if err > 1e-3:
        raise UnsupportedModelError(
            f"blocks.{L}: softmax(q k^T / {scale:.3g}) does not reproduce the attention pattern (max error {err:.1e}); "
            "per-position edges need plain causal scaled dot-product attention"
        )
    gz = gz.float()
    if kind == "v":
        gvec = torch.einsum("bhqk,bqhe->bhkqe", A, gz)  # dm/dv[k] via query q
        W = attn.W_V.detach().float()
    else:
        gA = torch.einsum("bqhe,bkhe->bhqk", gz, v)
        gs = A * (gA - (A * gA).sum(-1, keepdim=True))
        gvec = torch.einsum("bhqk,bqhe->bhkqe", gs, q) / scale
        W = attn.W_K.detach().float()
    x = store[f"x{L}"].detach().float()
    ln = st.model.blocks[L].ln1
    out = torch.zeros(dl.shape[0], A.shape[1], A.shape[2], A.shape[3])
    for s in range(dl.shape[0]):
        _, t = torch.autograd.functional.jvp(lambda y: ln(y).float(), (x,), (dl[s],))  # noqa: B023
        tv = torch.einsum("bpd,hde->bphe", t, W)  # change of the head's key/value at each key position
        out[s] = torch.einsum("bkhe,bhkqe->hkq", tv, gvec).cpu()
    return out


__all__ = ["eap_per_position"]
