"""Edge attribution: EAP, EAP-IG and exact edge (path) patching over the graph of :mod:`.structure`.

All three score an edge ``u -> v`` by the change of the metric when the contribution of sender ``u`` to the
input of receiver ``v`` alone is taken from the corrupted run, on the clean run (noising; METHODS.md 5.3/5.4):

- ``"eap"``: ``(a_u(x') - a_u(x)) . dm/d(input_v) |_x`` -- 2 forwards + 1 backward for every edge at once;
- ``"eap-ig"``: the same with the gradient averaged over ``steps`` points of a path from the corrupted to the
  clean run: ``path="inputs"`` interpolates the input embeddings (EAP-IG-inputs, the paper's variant;
  ``steps`` forward+backward passes over the batch), ``path="activations"`` interpolates each receiver's own
  input (``steps + 1`` passes per receiver, batched); then the scores of the edges into one input sum to that
  input's total effect ``m(input_v := corrupted) - m(clean)`` (completeness, reported in
  ``graph.metadata["completeness"]``);
- ``"exact"``: the ground truth -- one patched forward per (edge, prompt) row, many rows stacked per forward,
  each forward resumed from the receiver's layer and the first corrupted position where the backend allows it.

Scores are means over prompts of the metric change, so a score of ``m(corrupted) - m(clean)`` means the edge
alone carries the whole clean/corrupted difference.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import ConfigError
from ..core.hooks import run_with_hooks
from ..core.sites import site as resolve_site
from ..patching import default_rows, eval_metric, forward_rows, plan_chunks, prepare, quadrature
from .build import edge_graph, metadata
from .graph import Graph
from .structure import QKV, Slot, Structure

METHODS = ("eap", "eap-ig", "exact")
_ALIASES = {"eap_ig": "eap-ig", "eapig": "eap-ig", "ig": "eap-ig", "edge": "exact", "patching": "exact"}


def attribute_edges(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    method: str = "eap",
    steps: int = 16,
    quadrature_rule: str = "gausslegendre",
    path: str = "inputs",
    receivers: list[str] | None = None,
    batch_size: int | None = None,
    resume: bool = True,
    one_per_edge: bool = False,
    per_position: bool = False,
    progress: bool = False,
) -> Graph:
    """Score every edge of the model's graph.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
        A causal LM from :func:`mechwork.load_model` (encoders without an LM head are refused).
    batch : PromptBatch
        Clean and corrupted prompts of equal shape (``mechwork.tasks.get("ioi").prompts(32)``).
    metric : callable, Task or None
        ``metric(logits, batch) -> Float[Tensor, "batch"]``, one value per prompt; None: the batch's task metric.
    method : {"eap", "eap-ig", "exact"}
    steps : int
        EAP-IG quadrature points.
    quadrature_rule : str
        ``gausslegendre`` (default), ``left`` (the EAP-IG reference's Riemann sum), ``midpoint``, ``right``, ``trapezoid``.
    path : {"inputs", "activations"}
        EAP-IG path: ``inputs`` interpolates the input embeddings (the EAP-IG paper); ``activations`` interpolates
        each receiver's own input (edge scores into an input then sum to its total effect).
    receivers : list of str, optional
        EAP-IG ``path="activations"`` only: the receiver inputs to integrate (``"a1.h2<k>"``, ``"m0"``,
        ``"logits"``); default all.
    batch_size : int, optional
        Most rows per forward pass.
    resume : bool
        Exact patching: resume forwards from the receiver's layer and first corrupted position (HookedTransformer).
    one_per_edge : bool
        Exact patching: one full forward per edge over all prompts (the unbatched reference, for benchmarks).
    per_position : bool
        EAP only: nodes are components at token positions (``a1.h2@7``); a head at query position ``p`` receives
        its key/value edges from every earlier position (see :mod:`.positions`). ``graph.aggregate()`` sums them
        back to the component graph.
    progress : bool
        Progress bar.

    Returns
    -------
    Graph
        Edge-level graph: every valid edge with its score, ``metadata["cost"]`` with forward/backward counts.
    """
    t0 = time.perf_counter()
    method = _ALIASES.get(str(method).lower(), str(method).lower())
    if method not in METHODS:
        raise ConfigError(
            f"method must be one of {', '.join(METHODS)} (or 'relp'/'atp' for node level), got {method!r}"
        )
    if path not in ("inputs", "activations"):
        raise ConfigError(f"path must be 'inputs' or 'activations', got {path!r}")
    if per_position and method != "eap":
        raise ConfigError(f"per_position edges are computed with method='eap' only, got {method!r}")
    st = Structure(model)
    sites = [resolve_site(model, n) for n in st.capture_names]
    with st.flags():
        ctx = prepare(model, batch, metric, sites, "noise", skip_caches=resume and method != "eap")
        clean_out = st.sender_outputs(ctx.base_acts)
        delta = st.sender_outputs(ctx.src_acts) - clean_out
        first = _first_changed(ctx)
        run = _Runner(ctx, st, delta, first, batch_size, progress)
        info: dict[str, Any] = {}
        if per_position:
            from .positions import eap_per_position

            pos_edges = eap_per_position(ctx, st, delta)
            scores = None
        elif method == "eap":
            scores = run.scores(run.gradients(None))
        elif method == "eap-ig" and path == "inputs":
            scores = run.scores(run.ig_inputs(*quadrature(steps, quadrature_rule)))
            info = {"steps": steps, "quadrature": quadrature_rule, "path": path}
        elif method == "eap-ig":
            scores, comp = run.ig_activations(*quadrature(steps, quadrature_rule), _pick(st, receivers))
            info = {"steps": steps, "quadrature": quadrature_rule, "path": path, "completeness": comp}
        else:
            scores = run.exact(one_per_edge)
            info = {"one_per_edge": one_per_edge, "resume": bool(resume and ctx.layer_skip)}
    ctx.cost.seconds = time.perf_counter() - t0
    meta = metadata(
        model,
        ctx.batch,
        metric,
        method=method,
        level="edge",
        clean=ctx.clean_metric,
        corrupted=ctx.corrupted_metric,
        cost=ctx.cost.as_dict(),
        direction="noise",
        logits=ctx.base_logits,
        split_qkv="emulated (bridge)" if st.bridge else "hook_{q,k,v}_input",
        **info,
    )
    if scores is None:
        from .build import position_graph

        meta["per_position"] = True
        edges, used = pos_edges
        return position_graph(st, edges, used, meta, clean_out=clean_out, batch=ctx.batch)
    return edge_graph(st, scores, meta, clean_out=clean_out, batch=ctx.batch)


def _pick(st: Structure, names: list[str] | None) -> list[int]:
    if names is None:
        return list(range(len(st.receivers)))
    table = {r.name: i for i, r in enumerate(st.receivers)}
    out = []
    for n in names:
        if n not in table:
            import difflib

            close = difflib.get_close_matches(n, list(table), n=4)
            raise ConfigError(f"no receiver {n!r}" + (f"; closest: {', '.join(close)}" if close else ""))
        out.append(table[n])
    return out


def _first_changed(ctx: Any) -> Tensor:
    """Per prompt, the first position where clean and corrupted tokens differ (n_pos when identical)."""
    diff = ctx.base_tokens != ctx.src_tokens
    P = diff.shape[1]
    return torch.where(diff.any(1), diff.float().argmax(1), torch.full((diff.shape[0],), P, device=diff.device)).cpu()


class _Runner:
    """The forward/backward passes shared by the three methods."""

    def __init__(self, ctx: Any, st: Structure, delta: Tensor, first: Tensor, batch_size: int | None, progress: bool):
        self.ctx, self.st, self.delta, self.first = ctx, st, delta, first
        # on a CPU, chunks beyond a few hundred rows fall out of cache and run slower per row (measured on the
        # shipped models: 1024-row chunks took 1.9x as long as 128-row ones on toy-induction-2l)
        cap = 256 if ctx.base_tokens.device.type == "cpu" else 1 << 30
        self.max_rows = batch_size or max(1, min(cap, default_rows(ctx) // 4))
        self.progress = progress
        self.checked = not st.bridge

    # --- gradients ------------------------------------------------------------------------------------
    def _grad_pass(self, prompts: Tensor, extra: list[tuple[str, Any]], add: Any = None) -> dict[Slot, Tensor]:
        ctx, st = self.ctx, self.st
        probes: dict[Slot, Tensor] = {}

        def provide(slot: Slot, act: Tensor) -> Tensor:
            heads = (st.receiver_heads(slot),) if slot[1] in QKV else ()
            p = torch.zeros(tuple(act.shape[:2]) + heads + (act.shape[-1],), device=act.device, dtype=act.dtype)
            p.requires_grad_(True)
            probes[slot] = p
            more = add(slot, act) if add is not None else None
            return p if more is None else p + more

        hooks = extra + st.hooks(provide, check=not self.checked)
        with torch.enable_grad():
            logits = run_with_hooks(ctx.model, ctx.base_tokens[prompts], hooks)
            m = eval_metric(ctx.metric, logits, ctx.batch.select(prompts), "gradient pass")
            slots = list(probes)
            grads = torch.autograd.grad(m.sum(), [probes[s] for s in slots], allow_unused=True)
        self.checked = True
        ctx.account(len(prompts), None, 0, backward=True)
        self.last_metric = m.detach()
        return {s: (torch.zeros_like(probes[s]) if g is None else g.detach()) for s, g in zip(slots, grads)}

    def gradients(self, _: Any) -> dict[Slot, Tensor]:
        """Gradients at every receiver input on the clean run (EAP)."""
        ctx = self.ctx
        out: dict[Slot, Tensor] = {}
        for lo in range(0, ctx.n, self.max_rows):
            ids = torch.arange(lo, min(lo + self.max_rows, ctx.n), device=ctx.base_tokens.device)
            g = self._grad_pass(ids, [])
            for k, v in g.items():
                out[k] = v if k not in out else torch.cat([out[k], v])
        return out

    def ig_inputs(self, alphas: Tensor, weights: Tensor) -> dict[Slot, Tensor]:
        """Gradients averaged along the straight path of the input embeddings, corrupted -> clean."""
        ctx = self.ctx
        clean, corr = ctx.base_acts["hook_embed"], ctx.src_acts["hook_embed"]
        rows = [(k, b) for k in range(len(alphas)) for b in range(ctx.n)]
        acc: dict[Slot, Tensor] = {}
        for lo in tqdm(range(0, len(rows), self.max_rows), desc="eap-ig", disable=not self.progress, leave=False):
            chunk = rows[lo : lo + self.max_rows]
            prompts = torch.tensor([b for _, b in chunk], device=clean.device)
            a = alphas[[k for k, _ in chunk]].to(clean.device, clean.dtype).view(-1, 1, 1)
            x = corr[prompts] + a * (clean[prompts] - corr[prompts])
            w = weights[[k for k, _ in chunk]].to(clean.device, torch.float32)
            g = self._grad_pass(prompts, [("hook_embed", lambda t, hook=None, x=x: x)])
            for slot, v in g.items():
                wv = v.float() * w.view(-1, *([1] * (v.ndim - 1)))
                if slot not in acc:
                    acc[slot] = torch.zeros((ctx.n,) + tuple(v.shape[1:]), device=v.device)
                acc[slot].index_add_(0, prompts, wv)
        return acc

    def ig_activations(
        self, alphas: Tensor, weights: Tensor, picked: list[int]
    ) -> tuple[Tensor, dict[str, dict[str, float]]]:
        """Per receiver, gradients along the straight path of its own input (clean -> corrupted), batched."""
        ctx, st, delta = self.ctx, self.st, self.delta
        n, dev = ctx.n, ctx.base_tokens.device
        din = torch.einsum("rs,sbpd->rbpd", st.valid.float().to(delta.device), delta)  # change of each input
        a_all = torch.cat([alphas, torch.ones(1, dtype=alphas.dtype)])
        w_all = torch.cat([weights, torch.zeros(1, dtype=weights.dtype)])
        rows = [(r, k, b) for r in picked for k in range(len(a_all)) for b in range(n) if self.first[b] < ctx.n_pos]
        G = {r: torch.zeros(n, ctx.n_pos, delta.shape[-1], device=delta.device) for r in picked}
        total = {r: torch.zeros(n) for r in picked}
        for lo in tqdm(range(0, len(rows), self.max_rows), desc="eap-ig", disable=not self.progress, leave=False):
            chunk = rows[lo : lo + self.max_rows]
            rr = [st.receivers[r] for r, _, _ in chunk]
            prompts = torch.tensor([b for _, _, b in chunk], device=dev)
            a = a_all[[k for _, k, _ in chunk]].to(delta.device, delta.dtype)
            by_slot: dict[Slot, list[int]] = {}
            for i, rec in enumerate(rr):
                by_slot.setdefault(rec.slot, []).append(i)

            def add(slot: Slot, act: Tensor, chunk=chunk, rr=rr, a=a, by_slot=by_slot) -> Tensor | None:
                if slot not in by_slot:
                    return None
                heads = (st.receiver_heads(slot),) if slot[1] in QKV else ()
                out = torch.zeros(tuple(act.shape[:2]) + heads + (act.shape[-1],), device=act.device, dtype=act.dtype)
                for i in by_slot[slot]:
                    r, _, b = chunk[i]
                    val = a[i] * din[r, b]
                    if heads:
                        out[i, :, rr[i].head] = val
                    else:
                        out[i] = val
                return out

            g = self._grad_pass(prompts, [], add)
            m = self.last_metric.cpu()
            for i, (r, k, b) in enumerate(chunk):
                rec = rr[i]
                gi = g[rec.slot][i, :, rec.head] if rec.kind in QKV else g[rec.slot][i]
                G[r][b] += float(w_all[k]) * gi.float()
                if k == len(alphas):
                    total[r][b] = m[i] - ctx.base_metric[b].cpu()
        scores = torch.zeros(len(st.receivers), len(st.senders))
        comp: dict[str, dict[str, float]] = {}
        for r in picked:
            scores[r] = torch.einsum("sbpd,bpd->s", delta.float(), G[r]).cpu() / n
            scores[r] *= st.valid[r]
            exact, s = float(total[r].sum()) / n, float(scores[r].sum())
            comp[st.receivers[r].name] = {
                "exact": exact,
                "sum": s,
                "relative_error": abs(s - exact) / max(abs(exact), 1e-12),
            }
        return scores, comp

    def scores(self, grads: dict[Slot, Tensor]) -> Tensor:
        """``[receivers, senders]``: ``sum_{b,pos,d} delta_s . g_r`` over prompts, divided by their number."""
        st, delta, n = self.st, self.delta.float(), self.ctx.n
        out = torch.zeros(len(st.receivers), len(st.senders))
        for slot, idx in st.slots.items():
            g = grads[slot].float()
            if slot[1] in QKV:
                sc = torch.einsum("sbpd,bphd->hs", delta, g)
            else:
                sc = torch.einsum("sbpd,bpd->s", delta, g)[None]
            out[idx] = sc.cpu()
        return out * st.valid / n

    # --- exact ----------------------------------------------------------------------------------------
    def exact(self, one_per_edge: bool) -> Tensor:
        """Patch each edge alone, many (edge, prompt) rows per forward."""
        ctx, st, delta = self.ctx, self.st, self.delta
        n, P, dev = ctx.n, ctx.n_pos, ctx.base_tokens.device
        edges = st.valid.nonzero().tolist()  # (receiver, sender)
        nz = (delta != 0).flatten(2).any(-1).cpu()  # [S, n]: sender changes for this prompt
        rows = [(e, b) for e, (r, s) in enumerate(edges) for b in range(n) if nz[s, b]]
        layer_of = [min(st.receivers[r].layer, st.n_layers - 1) for r, _ in edges]
        skip = ctx.layer_skip and not one_per_edge
        keys = [
            (layer_of[edges_i] if skip else -1, int(self.first[b]) if (ctx.pos_skip and skip) else 0)
            for edges_i, b in rows
        ]
        order = sorted(range(len(rows)), key=lambda i: (keys[i], i)) if not one_per_edge else list(range(len(rows)))
        rows, keys = [rows[i] for i in order], [keys[i] for i in order]
        if one_per_edge:
            chunks, lo = [], 0
            while lo < len(rows):
                hi = lo
                while hi < len(rows) and rows[hi][0] == rows[lo][0]:
                    hi += 1
                chunks.append((lo, hi))
                lo = hi
        else:
            chunks = plan_chunks([max(k[0], 0) for k in keys], [k[1] for k in keys], self.max_rows, st.n_layers, P, 4.0)
        effects = torch.zeros(len(edges), n)
        for lo, hi in tqdm(chunks, desc="exact edge patching", disable=not self.progress, leave=False):
            chunk = rows[lo:hi]
            layer = None if keys[lo][0] < 0 else keys[lo][0]
            p0 = min(k[1] for k in keys[lo:hi])
            prompts = torch.tensor([b for _, b in chunk], device=dev)
            by_slot: dict[Slot, list[int]] = {}
            for i, (e, _) in enumerate(chunk):
                by_slot.setdefault(st.receivers[edges[e][0]].slot, []).append(i)

            def add(slot: Slot, act: Tensor, chunk=chunk, by_slot=by_slot, p0=p0) -> Tensor | None:
                if slot not in by_slot:
                    return None
                heads = (st.receiver_heads(slot),) if slot[1] in QKV else ()
                out = torch.zeros(tuple(act.shape[:2]) + heads + (act.shape[-1],), device=act.device, dtype=act.dtype)
                sel = by_slot[slot]
                ei = [edges[chunk[i][0]] for i in sel]
                vals = delta[[s for _, s in ei], [chunk[i][1] for i in sel], p0:].to(act.dtype)
                sel_t = torch.tensor(sel, device=act.device)
                if heads:
                    h = torch.tensor([st.receivers[r].head for r, _ in ei], device=act.device)
                    out[sel_t, :, h] = vals
                else:
                    out[sel_t] = vals
                return out

            hooks = st.hooks(add, check=not self.checked)
            self.checked = True
            with torch.no_grad():
                logits = forward_rows(ctx, prompts, layer, p0, hooks)
                m = eval_metric(ctx.metric, logits, ctx.batch.select(prompts), "edge-patched run")
            ctx.account(hi - lo, layer, p0)
            e_idx = torch.tensor([e for e, _ in chunk])
            effects[e_idx, prompts.cpu()] = (m - ctx.base_metric[prompts]).float().cpu()
        scores = torch.zeros(len(st.receivers), len(st.senders))
        for e, (r, s) in enumerate(edges):
            scores[r, s] = effects[e].sum() / n
        return scores


__all__ = ["attribute_edges", "METHODS"]
