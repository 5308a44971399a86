"""SAE-latent graphs: nodes are the active latents of SAEs spliced at chosen sites (per position), each site's
reconstruction error (per position), the token embeddings and the metric; edges are direct effects.

At every spliced site the activation is replaced by ``decode(f) + error`` with the codes ``f = encode(x)`` and
the error as *leaves* of the autograd graph: the value of the forward pass is unchanged, and a gradient taken
at a leaf runs only along paths that do not pass through another spliced site (the latents there are nodes of
their own). An edge ``u -> v`` has weight ``a_u * d(target_v)/d(a_u)`` summed over the node's coordinates
(activation times gradient, circuit-tracer's direct-effect convention, relative to zero), where the target is
the downstream latent's activation (computed from the live input of its site) or the metric; weights are means
over the prompts (one prompt by default, as Neuronpedia graphs are). Attention patterns and LayerNorm scales are
*not* frozen: paths through attention to other positions are included in the gradient, so a latent's edges come
from every earlier position.

Labels: the top tokens of each latent's decoder direction projected on the unembedding, and, when a
:class:`mechwork.sae.LatentStats` is given for a site, the latent's best-matching ground-truth tag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, ShapeError
from ..core.hooks import run_with_hooks
from ..core.sites import Site
from ..core.sites import site as resolve_site
from ..patching import eval_metric
from ..patching.runs import check_batch, resolve_metric
from .build import metadata, str_tokens, top_tokens
from .graph import Graph, GraphEdge, GraphNode
from .structure import check_model


def parse_sae_args(items: list[str]) -> dict[str, Any]:
    """``["SITE=DIR", ...]`` -> ``{site: loaded SAE}`` (``DIR`` alone: the SAE's own site)."""
    from .. import sae as sae_mod

    out: dict[str, Any] = {}
    for item in items:
        site, sep, path = item.partition("=")
        if not sep:
            path, site = item, ""
        s = sae_mod.load(Path(path))
        site = site.strip() or getattr(s, "site", None)
        if not site:
            raise ConfigError(f"--sae {item!r}: give SITE=DIR (the SAE does not record its site)")
        out[site] = s
    if not out:
        raise ConfigError("no SAEs given")
    return out


def _width(sae: Any) -> int | None:
    d = getattr(sae, "d_in", None)
    if d is None:
        d = getattr(getattr(sae, "cfg", None), "d_in", None)
    return None if d is None else int(d)


def _order(model: Any, saes: dict[str, Any]) -> list[tuple[Site, Any]]:
    out = []
    for name, s in saes.items():
        site = resolve_site(model, name)
        if site.d is None or site.layer is None or len(site.shape or ()) != 1:
            raise ShapeError(
                f"SAE site {site.name} has per-token shape {site.shape}; latent graphs splice SAEs at sites of "
                "shape [batch, pos, width] in a block (resid_pre/mid/post, attn_out, mlp_out, mlp_post)"
            )
        width = _width(s)
        if width is not None and width != site.d:
            raise ShapeError(f"the SAE for {site.name} reads width {width}, but the site has width {site.d}")
        out.append((site, s))
    order = {n: i for i, n in enumerate(model.hook_dict)}
    return sorted(out, key=lambda x: (x[0].layer, order.get(x[0].name, 0)))


def attribute_latents(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    saes: dict[str, Any],
    max_targets: int = 64,
    scans: dict[str, Any] | None = None,
    min_weight: float = 0.0,
) -> Graph:
    """The SAE-latent graph of ``batch`` (see the module docstring).

    Parameters
    ----------
    saes : dict
        ``{site name: SAE}`` (``mechwork.sae.load(path)``); each SAE must read its site's width.
    max_targets : int
        Per downstream site, the latents (by |direct effect on the metric|) whose incoming edges are computed
        (one backward pass each).
    scans : dict, optional
        ``{site: LatentStats}``: label latents with their best ground-truth tag.
    min_weight : float
        Drop edges with ``|weight| <= min_weight``.
    """
    t0 = time.perf_counter()
    check_model(model)
    if not saes:
        raise ConfigError("attribute_latents needs at least one SAE: saes={site: sae}")
    batch = check_batch(model, batch)
    metric_fn = resolve_metric(metric, batch)
    spliced = _order(model, saes)
    n = int(batch.clean.shape[0])
    leaves: dict[str, tuple[Tensor, Tensor]] = {}
    targets: dict[str, Tensor] = {}
    emb: dict[str, Tensor] = {}

    def embed_hook(t: Tensor, hook: Any = None) -> Tensor:
        e = t.detach().clone().requires_grad_(True)
        emb["e"] = e
        return e

    def make(site: Site, sae: Any) -> Any:
        def hook(x: Tensor, hook: Any = None) -> Tensor:
            f = sae.encode(x)
            targets[site.name] = f
            leaf = f.detach().clone().requires_grad_(True)
            err = (x - sae.decode(f)).detach().clone().requires_grad_(True)
            leaves[site.name] = (leaf, err)
            return sae.decode(leaf) + err

        return hook

    hooks = [("hook_embed", embed_hook)] + [(s.name, make(s, sae)) for s, sae in spliced]
    with torch.enable_grad():
        logits = run_with_hooks(model, batch.clean, hooks)
        m = eval_metric(metric_fn, logits, batch, "clean run with SAEs spliced").sum() / n
        # node values (sources): tokens, latents and errors of every site
        sources: list[tuple[str, Tensor]] = [("tok", emb["e"])]
        for s, _ in spliced:
            sources += [(s.name, leaves[s.name][0]), (s.name + ":err", leaves[s.name][1])]
        srcs = [t for _, t in sources]

        def attribute(target: Tensor) -> list[Tensor]:
            grads = torch.autograd.grad(target, srcs, retain_graph=True, allow_unused=True)
            out = []
            for (_name, v), g in zip(sources, grads):
                g = torch.zeros_like(v) if g is None else g
                prod = v.detach() * g
                out.append(prod.mean(0))
            return out  # per source: [pos, d] (tokens/errors, summed later) or [pos, d_sae]

        to_logits = attribute(m)
        cost = {"forwards": 1, "backwards": 1}
        nodes, edges = _nodes(model, batch, spliced, leaves, emb, to_logits, scans)
        index = {(nd.site, nd.index, nd.pos): nd.id for nd in nodes if nd.kind == "latent"}
        _edges_from(sources, to_logits, "logits", nodes, edges, spliced, min_weight, index)
        for k, (site, _) in enumerate(spliced):
            upstream = 1 + 2 * k  # tokens, then the latents and errors of the sites before this one
            f = targets[site.name]
            mean_act = f.detach().mean(0)  # [pos, d_sae]
            cand = [nd for nd in nodes if nd.kind == "latent" and nd.site == site.name]
            cand = sorted(cand, key=lambda nd: -abs(nd.score))[:max_targets]
            for nd in cand:
                if float(mean_act[nd.pos, nd.index]) <= 0:
                    continue
                attr = attribute(f[:, nd.pos, nd.index].sum() / n)
                cost["backwards"] += 1
                _edges_from(sources[:upstream], attr[:upstream], nd.id, nodes, edges, spliced, min_weight, index)
    meta = metadata(
        model,
        batch,
        metric,
        method="activation x gradient (direct effects)",
        level="latent",
        clean=float(m.detach()) if n else 0.0,
        sae_sites=[s.name for s, _ in spliced],
        max_targets=max_targets,
        logits=logits.detach(),
        cost={**cost, "seconds": round(time.perf_counter() - t0, 4)},
    )
    used = {e.src for e in edges} | {e.dst for e in edges}
    keep = [nd for nd in nodes if nd.id in used or nd.kind in ("logits", "token")]
    return Graph(keep, edges, meta)


def _nodes(
    model: Any,
    batch: Any,
    spliced: list[tuple[Site, Any]],
    leaves: dict[str, tuple[Tensor, Tensor]],
    emb: dict[str, Tensor],
    to_logits: list[Tensor],
    scans: dict[str, Any] | None,
) -> tuple[list[GraphNode], list[GraphEdge]]:
    P = int(batch.clean.shape[1])
    toks = batch.clean[0]
    names = str_tokens(model, toks)
    nodes = [
        GraphNode(f"tok@{p}", "token", -1, int(toks[p]), p, "hook_embed", float(to_logits[0][p].sum()), label=names[p])
        for p in range(P)
    ]
    for k, (site, sae) in enumerate(spliced):
        acts = leaves[site.name][0].detach().mean(0)  # [pos, d_sae]
        active = (acts > 0).nonzero().tolist()
        ids = sorted({i for _, i in active})
        tops: dict[int, list[str]] = {}
        if ids:
            with torch.no_grad():
                eye = torch.zeros(len(ids), acts.shape[-1], device=acts.device, dtype=acts.dtype)
                eye[torch.arange(len(ids)), torch.tensor(ids)] = 1
                dirs = sae.decode(eye) - sae.decode(torch.zeros_like(eye[:1]))
            tops = dict(zip(ids, top_tokens(model, dirs)))
        tags = _tags(scans, site.name)
        attr = to_logits[1 + 2 * k]
        for p, i in active:
            nodes.append(
                GraphNode(
                    f"{site.alias}:{i}@{p}",
                    "latent",
                    int(site.layer),  # type: ignore[arg-type]
                    i,
                    p,
                    site.name,
                    float(attr[p, i]),
                    activation=float(acts[p, i]),
                    label=tags.get(i, f"{site.alias} #{i}"),
                    top_tokens=tops.get(i, []),
                )
            )
        err = to_logits[2 + 2 * k]
        for p in range(P):
            nodes.append(
                GraphNode(
                    f"{site.alias}:err@{p}",
                    "error",
                    int(site.layer),  # type: ignore[arg-type]
                    None,
                    p,
                    site.name,
                    float(err[p].sum()),
                    label=f"error {site.alias}",
                )  # type: ignore[arg-type]
            )
    nodes.append(
        GraphNode(
            "logits",
            "logits",
            int(model.cfg.n_layers),
            int(batch.answer[0]) if batch.answer is not None else None,
            int(batch.pos[0]),
            "",
            0.0,
            label="metric",
        )
    )
    return nodes, []


def _tags(scans: dict[str, Any] | None, site: str) -> dict[int, str]:
    if not scans or site not in scans:
        return {}
    try:
        return {int(r["latent"]): f"{r['tag']} (F1 {r['f1']:.2f})" for r in scans[site].tag_table()}
    except (AttributeError, KeyError, TypeError):
        return {}


def _edges_from(
    sources: list[tuple[str, Tensor]],
    attrs: list[Tensor],
    dst: str,
    nodes: list[GraphNode],
    edges: list[GraphEdge],
    spliced: list[tuple[Site, Any]],
    min_weight: float,
    index: dict[tuple[str, int | None, int | None], str],
) -> None:
    alias = {s.name: s.alias for s, _ in spliced}
    for (name, _), a in zip(sources, attrs):
        if name == "tok":
            for p in range(a.shape[0]):
                w = float(a[p].sum())
                if abs(w) > min_weight:
                    edges.append(GraphEdge(f"tok@{p}", dst, w, "latent" if dst != "logits" else "logits"))
        elif name.endswith(":err"):
            site = name[: -len(":err")]
            for p in range(a.shape[0]):
                w = float(a[p].sum())
                if abs(w) > min_weight:
                    edges.append(GraphEdge(f"{alias[site]}:err@{p}", dst, w, "latent" if dst != "logits" else "logits"))
        else:
            nz = (a.abs() > min_weight).nonzero().tolist()
            for p, i in nz:
                src = index.get((name, i, p))
                if src is not None:
                    edges.append(GraphEdge(src, dst, float(a[p, i]), "latent" if dst != "logits" else "logits"))


__all__ = ["attribute_latents", "parse_sae_args"]


def latent_faithfulness(
    graph: Graph, model: Any, batch: Any, metric: Any = None, *, saes: dict[str, Any], ablation: str = "corrupt"
) -> Any:
    """Faithfulness of an SAE-latent graph: the clean run with the SAEs spliced, where every latent that is
    active on the clean prompt but *not* a node of ``graph``, and every error term not in it, takes its value on
    the corrupted prompt (``"corrupt"``) or its mean over the corrupted prompts (``"mean"``). The universe is
    what the graph can contain (clean-active latents and the error terms): latents inactive on the clean prompt
    keep their clean value 0, so the full graph scores 1 exactly, and ``empty`` (the whole universe ablated)
    differs from the corrupted run by what corrupted-only latents carry.
    ``value = (m(C) - m(corrupted)) / (m(clean) - m(corrupted))``."""
    from .faithful import ABLATIONS, CircuitFaithfulness

    t0 = time.perf_counter()
    if ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    batch = check_batch(model, batch)
    metric_fn = resolve_metric(metric, batch)
    spliced = _order(model, saes)
    missing = sorted({n.site for n in graph.nodes if n.kind in ("latent", "error")} - {s.name for s, _ in spliced})
    if missing:
        raise ConfigError(f"the graph has latents at {missing}: pass their SAEs in saes=")
    P = int(batch.clean.shape[1])
    keep: dict[str, tuple[Tensor, Tensor]] = {}
    for site, sae in spliced:
        d_sae = int(getattr(sae, "d_sae", 0) or sae.encode(torch.zeros(1, site.d or 1)).shape[-1])
        lat = torch.zeros(P, d_sae, dtype=torch.bool)
        err = torch.zeros(P, dtype=torch.bool)
        for n in graph.nodes:
            if n.site == site.name and n.pos is not None and n.pos < P:
                if n.kind == "latent" and n.index is not None:
                    lat[n.pos, n.index] = True
                elif n.kind == "error":
                    err[n.pos] = True
        keep[site.name] = (lat, err)
    corr: dict[str, tuple[Tensor, Tensor]] = {}
    clean_codes: dict[str, Tensor] = {}

    def record(site: Site, sae: Any) -> Any:
        def hook(x: Tensor, hook: Any = None) -> Tensor:
            f = sae.encode(x)
            r = sae.decode(f)
            corr[site.name] = (f.detach(), (x - r).detach())
            return r + (x - r)

        return hook

    def circuit(site: Site, sae: Any, kept: tuple[Tensor, Tensor] | None) -> Any:
        def hook(x: Tensor, hook: Any = None) -> Tensor:
            f = sae.encode(x)
            err = x - sae.decode(f)
            if kept is None:
                clean_codes[site.name] = f.detach()
                return sae.decode(f) + err
            fc, ec = corr[site.name]
            if ablation == "mean":
                fc, ec = fc.mean(0, keepdim=True), ec.mean(0, keepdim=True)
            lat, ek = kept[0].to(f.device), kept[1].to(f.device)
            outside = ~lat[None] & (clean_codes[site.name] > 0)
            f = torch.where(outside, fc.expand_as(f), f)
            err = torch.where(ek[None, :, None], err, ec.expand_as(err))
            return sae.decode(f) + err

        return hook

    def mean_metric(tokens: Tensor, make: Any, what: str) -> Tensor:
        hooks = [(s.name, make(s, a)) for s, a in spliced]
        return eval_metric(metric_fn, run_with_hooks(model, tokens, hooks), batch, what).mean()

    empty = {k: (torch.zeros_like(v[0]), torch.zeros_like(v[1])) for k, v in keep.items()}
    with torch.no_grad():
        m_corr = mean_metric(batch.corrupted, record, "corrupted run")
        m_clean = mean_metric(batch.clean, lambda s, a: circuit(s, a, None), "clean run")
        m_c = mean_metric(batch.clean, lambda s, a: circuit(s, a, keep[s.name]), "circuit run")
        m_e = mean_metric(batch.clean, lambda s, a: circuit(s, a, empty[s.name]), "empty-circuit run")
    gap = float(m_clean - m_corr)
    n_nodes = sum(int(v[0].sum() + v[1].sum()) for v in keep.values())
    return CircuitFaithfulness(
        value=float("nan") if gap == 0 else float(m_c - m_corr) / gap,
        metric=float(m_c),
        clean=float(m_clean),
        corrupted=float(m_corr),
        empty=float(m_e),
        n_edges=graph.n_edges,
        n_edges_total=int(graph.metadata.get("pruning", {}).get("n_edges_before", graph.n_edges)),
        ablation=ablation,
        seconds=time.perf_counter() - t0,
        n_nodes=n_nodes,
    )
