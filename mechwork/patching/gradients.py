"""Gradient estimates of activation patching: attribution patching (AtP), relevance patching (RelP) and
integrated gradients (IG), all on the same grid and with the same result type as :func:`activation_patch`.

Conventions (METHODS.md 5.2, 5.7, 5.9): for a cell with base activation ``a'`` and source activation ``a``,

- AtP  = ``sum_cell (a - a') * dm/da|_{a'}`` (first-order Taylor expansion of the patch, gradient on the base run);
- RelP = the same product with the gradient replaced by LRP propagation coefficients (:mod:`.lrp`);
- IG   = ``sum_cell (a - a') * int_0^1 dm/da|_{a' + t (a - a')} dt``, interpolating the *site's own activation*
  (every cell of a site at once) and recomputing everything downstream, so that per site
  ``sum over cells IG = m(site := a) - m(base)`` (completeness) up to quadrature error.

Gradients are read with zero-valued probes added at each site (``act + probe``, the gradient w.r.t. ``probe``
is the gradient w.r.t. ``act``): this works on both backends, including bridge sites whose forward hooks
see reshaped views where ``retain_grad`` is inert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import ConfigError
from ..core.hooks import run_with_hooks
from ..core.sites import Site
from .activation import default_rows, make_result, plan_chunks
from .grid import build_grid, expand_sites, normalize_per, pos_axis, to_canonical
from .lrp import lrp_hooks, parse_rules
from .result import PatchResult
from .runs import Context, eval_metric, forward_rows, position_labels, prepare

QUADRATURES = ("gausslegendre", "midpoint", "left", "right", "trapezoid")
_QK_KINDS = ("q", "k", "pattern", "attn_scores")


def attribution_patch(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    sites: str | Site | Sequence[str | Site] | None = None,
    per: str = "position",
    direction: str = "denoise",
    batch_size: int | None = None,
    progress: bool = False,
) -> PatchResult:
    """Attribution patching: ``(a_source - a_base) . grad m`` at the base run, for every cell at once.

    Same arguments and result as :func:`~mechwork.patching.activation_patch`; costs two forward passes and
    one backward pass. Exact where the metric is linear in the site (e.g. a last-layer head output with no
    normalisation after it); can be badly wrong through saturated non-linearities.
    """
    return _first_order(model, batch, metric, sites, per, direction, batch_size, progress, "attribution", ())


def relevance_patch(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    sites: str | Site | Sequence[str | Site] | None = None,
    per: str = "position",
    direction: str = "denoise",
    rules: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> PatchResult:
    """Relevance patching (RelP): attribution patching with LRP propagation coefficients as the gradient.

    Parameters
    ----------
    rules : sequence of str, optional
        LRP rules (:mod:`mechwork.patching.lrp`): ``"layernorm"``, ``"identity"``, ``"half"``, ``"attention"``.
        Default ``("layernorm", "identity", "half")`` as in the RelP reference code; add ``"attention"`` for
        the AH-rule (attention patterns constant; then q, k and pattern sites carry no relevance and are refused).

    Other arguments and the result are those of :func:`~mechwork.patching.activation_patch`; the cost is that
    of attribution patching.
    """
    parsed = parse_rules(rules)
    return _first_order(model, batch, metric, sites, per, direction, batch_size, progress, "relevance", parsed)


def _first_order(
    model: Any,
    batch: Any,
    metric: Any,
    sites: Any,
    per: str,
    direction: str,
    batch_size: int | None,
    progress: bool,
    method: str,
    rules: tuple[str, ...],
) -> PatchResult:
    t0 = time.perf_counter()
    per = normalize_per(per)
    site_list = expand_sites(model, sites, per)
    if "attention" in rules:
        bad = [s.alias for s in site_list if s.kind in _QK_KINDS]
        if bad:
            raise ConfigError(
                f"the AH-rule treats attention patterns as constants, so {bad} carry no relevance; "
                "drop 'attention' from rules to score query/key/pattern sites"
            )
    ctx = prepare(model, batch, metric, site_list, direction, skip_caches=False, base_acts=False)
    grid = build_grid(model, site_list, per, ctx.n_pos, position_labels(model, ctx.batch, per))
    before, after = lrp_hooks(model, rules) if rules else ([], [])
    per_prompt = grid.empty(ctx.n)
    metrics = torch.zeros(ctx.n, device=ctx.base_tokens.device)
    step = batch_size or max(1, default_rows(ctx) // 4)
    for lo in tqdm(range(0, ctx.n, step), desc=method, disable=not progress, leave=False):
        ids = torch.arange(lo, min(lo + step, ctx.n), device=ctx.base_tokens.device)
        probes: dict[str, Tensor] = {}
        acts: dict[str, Tensor] = {}
        hooks = before + [(s.name, _probe(s.name, probes, acts)) for s in site_list] + after
        with torch.enable_grad():
            logits = run_with_hooks(model, ctx.base_tokens[ids], hooks, attention_mask=ctx.rows_mask(ids))
            m = eval_metric(ctx.metric, logits, ctx.batch.select(ids), "base run")
            grads = torch.autograd.grad(m.sum(), [probes[s.name] for s in site_list], allow_unused=True)
        ctx.account(len(ids), None, 0, backward=True)
        metrics[ids] = m.detach()
        for s, g in zip(site_list, grads):
            diff = (ctx.src_acts[s.name][ids] - acts[s.name]).float()
            prod = diff * (torch.zeros_like(diff) if g is None else g.float())
            per_prompt[(ids.cpu(),) + grid.index(s)] = grid.reduce(to_canonical(prod, s.layout), s).cpu()
    ctx.base_metric = metrics
    ctx.cost.seconds = time.perf_counter() - t0
    info = {"rules": list(rules)} if method == "relevance" else {}
    return make_result(ctx, grid, per_prompt, method, **info)


def _probe(name: str, probes: dict[str, Tensor], acts: dict[str, Tensor]) -> Callable:
    def hook(t: Tensor, hook: Any = None) -> Tensor:
        acts[name] = t.detach()
        probes[name] = torch.zeros_like(t, requires_grad=True)
        return t + probes[name]

    return hook


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a ``steps``-point rule for ``int_0^1 f``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return torch.tensor((x + 1) / 2, dtype=torch.float64), torch.tensor(w / 2, dtype=torch.float64)
    k = torch.arange(steps, dtype=torch.float64)
    if method == "midpoint":
        return (k + 0.5) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "left":
        return k / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "right":
        return (k + 1) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "trapezoid":
        if steps < 2:
            raise ConfigError("the trapezoid rule needs steps >= 2")
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
        return k / (steps - 1), w
    raise ConfigError(f"method must be one of {', '.join(QUADRATURES)}, got {method!r}")


def integrated_gradients(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    sites: str | Site | Sequence[str | Site] | None = None,
    per: str = "position",
    direction: str = "denoise",
    steps: int = 64,
    method: str = "gausslegendre",
    path: str = "site",
    batch_size: int | None = None,
    resume: bool = True,
    progress: bool = False,
) -> PatchResult:
    """Integrated gradients from the base to the source activations.

    Parameters
    ----------
    steps : int
        Quadrature points along the path (batched: rows = points x prompts, chunked).
    method : {"gausslegendre", "midpoint", "left", "right", "trapezoid"}
        Quadrature rule; ``"left"`` is EAP-IG's Riemann sum.
    path : {"site", "input"}
        ``"site"``: interpolate each site's own activation (every cell of the site together) and recompute
        everything downstream; per site, the scores sum to ``m(site := source) - m(base)`` (completeness).
        Cost: about ``steps + 1`` forward and backward passes per site. A cell's score is its share of the
        *joint* patch of its site, which can differ from patching the cell alone (redundant heads).
        ``"input"``: interpolate the input embeddings (``resid_pre.0``) once and integrate the gradients at
        every site along that path (EAP-IG); ``steps + 1`` passes in all; no per-site completeness.
    resume : bool
        Resume forwards from the interpolated layer and first changed position where the backend allows it.

    Other arguments and the result are those of :func:`~mechwork.patching.activation_patch`.
    ``info["completeness"]`` gives per site (path ``"site"``) or for the whole path (``"input"``) the exact
    endpoint difference of the metric, the sum of the scores and their relative gap.
    """
    t0 = time.perf_counter()
    per = normalize_per(per)
    alphas, weights = quadrature(steps, method)
    if path not in ("site", "input"):
        raise ConfigError(f"path must be 'site' or 'input', got {path!r}")
    site_list = expand_sites(model, sites, per)
    start = expand_sites(model, "resid_pre.0", "layer")[0]
    capture = site_list + ([start] if path == "input" and start.name not in {x.name for x in site_list} else [])
    ctx = prepare(model, batch, metric, capture, direction, skip_caches=resume)
    grid = build_grid(model, site_list, per, ctx.n_pos, position_labels(model, ctx.batch, per))
    per_prompt = grid.empty(ctx.n)
    completeness: dict[str, dict[str, float]] = {}
    max_rows = batch_size or max(1, default_rows(ctx) // 4)
    groups = [(x, [x]) for x in site_list] if path == "site" else [(start, site_list)]
    for along, scored in tqdm(groups, desc="integrated gradients", disable=not progress, leave=False):
        scores, endpoint = _ig_path(ctx, along, scored, grid, alphas, weights, max_rows)
        exact = float((endpoint - ctx.base_metric.cpu()).mean())  # type: ignore[union-attr]
        for x in scored:
            per_prompt[(slice(None),) + grid.index(x)] = scores[x.name]
        total = float(sum(scores[x.name].reshape(ctx.n, -1).sum(-1) for x in scored).mean())  # type: ignore[union-attr]
        completeness[along.alias if path == "site" else "input"] = {
            "exact": exact,
            "sum": total,
            "relative_error": abs(total - exact) / max(abs(exact), 1e-12),
        }
    ctx.cost.seconds = time.perf_counter() - t0
    return make_result(
        ctx,
        grid,
        per_prompt,
        "integrated_gradients",
        steps=steps,
        quadrature=method,
        path=path,
        completeness=completeness,
    )


def _ig_path(
    ctx: Context, along: Site, scored: list[Site], grid: Any, alphas: Tensor, weights: Tensor, max_rows: int
) -> tuple[dict[str, Tensor], Tensor]:
    """IG scores ``{site: [n, *cell axes]}`` of ``scored`` along the straight path of site ``along``, and the
    metric at the path's end (``along`` := source)."""
    n, P, dev = ctx.n, ctx.n_pos, ctx.base_tokens.device
    base, src = ctx.base_acts[along.name], ctx.src_acts[along.name]
    changed = ctx.changed(along.name).any(-1).cpu()  # [n, P]
    active = changed.any(-1)
    first = torch.where(active, changed.float().argmax(-1), torch.full((n,), P, dtype=torch.long))
    out = {
        s.name: torch.zeros(
            (n,) + tuple(grid.reduce(torch.zeros(1, P, grid.site_heads(s), 1), s).shape[1:]), dtype=torch.float64
        )
        for s in scored
    }
    endpoint = ctx.base_metric.detach().cpu().clone()  # type: ignore[union-attr]
    # rows: (prompt, point); point == len(alphas) is the end alpha = 1 (weight 0), for the completeness check
    a_all = torch.cat([alphas, torch.ones(1, dtype=torch.float64)])
    w_all = torch.cat([weights, torch.zeros(1, dtype=torch.float64)])
    rows = [(int(b), k) for b in active.nonzero().flatten().tolist() for k in range(len(a_all))]
    if not rows:
        return {k: v.float() for k, v in out.items()}, endpoint
    starts = [ctx.start(int(along.layer), int(first[b])) for b, _ in rows]  # type: ignore[arg-type]
    order = sorted(range(len(rows)), key=lambda i: (starts[i][1], i))
    rows, starts = [rows[i] for i in order], [starts[i] for i in order]
    for lo, hi in plan_chunks([0] * len(rows), [p for _, p in starts], max_rows, ctx.n_layers, P, 4.0):
        layer, p0 = starts[lo][0], min(p for _, p in starts[lo:hi])
        prompts = torch.tensor([b for b, _ in rows[lo:hi]], device=dev)
        pts = torch.tensor([k for _, k in rows[lo:hi]])
        ax = pos_axis(along.layout)
        a = a_all[pts].to(device=dev, dtype=base.dtype).view(-1, *([1] * (base.ndim - 1)))
        x = (base[prompts] + a * (src[prompts] - base[prompts])).narrow(ax, p0, P - p0)
        probes: dict[str, Tensor] = {}
        hooks = [(along.name, lambda t, hook=None, x=x: x)] + [(s.name, _probe(s.name, probes, {})) for s in scored]
        with torch.enable_grad():
            logits = forward_rows(ctx, prompts, layer, p0, hooks)
            m = eval_metric(ctx.metric, logits, ctx.batch.select(prompts), "integrated-gradients path")
            grads = torch.autograd.grad(m.sum(), [probes[s.name] for s in scored], allow_unused=True)
        ctx.account(hi - lo, layer, p0, backward=True)
        w = w_all[pts]
        for s, g in zip(scored, grads):
            if g is None:
                continue
            sx = pos_axis(s.layout)
            d = (ctx.src_acts[s.name][prompts] - ctx.base_acts[s.name][prompts]).narrow(sx, p0, P - p0)
            prod = to_canonical(d.float() * g.float(), s.layout)
            full = torch.zeros((hi - lo, P) + tuple(prod.shape[2:]), dtype=prod.dtype, device=prod.device)
            full[:, p0:] = prod
            cell = grid.reduce(full, s).double().cpu()
            out[s.name].index_add_(0, prompts.cpu(), cell * w.view(-1, *([1] * (cell.ndim - 1))))
        end = pts == len(alphas)
        endpoint[prompts.cpu()[end]] = m.detach().cpu()[end]
    return {k: v.float() for k, v in out.items()}, endpoint


__all__ = ["attribution_patch", "relevance_patch", "integrated_gradients", "quadrature", "QUADRATURES"]
