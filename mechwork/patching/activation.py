"""Activation patching with many patched copies per forward pass.

Each (cell, prompt) pair whose patch changes anything becomes one *row*; rows are stacked along the batch
axis and run together. A (cell, prompt) pair whose source and base activations are identical over the
cell (e.g. positions before the first corrupted token) has an effect of exactly zero and is not run. Rows
are sorted by where their forward can resume (layer, first changed position) and cut into chunks by a small
dynamic programme that trades wasted work against the fixed cost of a forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import ConfigError
from ..core.sites import Site
from .grid import Grid, build_grid, expand_sites, mask_to_layout, normalize_per, pos_axis
from .result import PatchResult
from .runs import LOCAL_KINDS, Context, eval_metric, forward_rows, position_labels, prepare

Cell = list[tuple[str, Tensor]]  # (site name, canonical [pos, head] mask) patched together


def activation_patch(
    model: Any,
    batch: Any,
    metric: Any = None,
    *,
    sites: str | Site | Sequence[str | Site] | None = None,
    per: str = "position",
    direction: str = "denoise",
    batch_size: int | None = None,
    resume: bool = True,
    progress: bool = False,
) -> PatchResult:
    """Activation patching: the metric change when one cell's activation is taken from the other run.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    batch : PromptBatch
        ``clean`` and ``corrupted`` tokens of equal shape (``mechwork.tasks.get(name).prompts(n)``).
    metric : callable, Task or None
        ``metric(logits, batch) -> Float[Tensor, "batch"]``, one value per prompt, treating prompts
        independently (rows are re-batched). None: the metric of ``batch.task``.
    sites : str, Site or sequence
        Site kinds expanded over layers (``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``, ``"z"``, ``"q"``,
        ``"pattern"``, ...), groups (``"block"`` = resid_pre + attn_out + mlp_out, ``"heads"`` = z), or single
        sites (``"z.1"``, ``"blocks.1.attn.hook_z"``). Default: ``"resid_pre"``, or ``"z"`` for head granularities.
    per : {"layer", "position", "head", "head_position"}
        Cell granularity (see :mod:`mechwork.patching.grid`).
    direction : {"denoise", "noise"}
        ``denoise``: run the corrupted input, patch in clean activations (scores are m(patched) - m(corrupted));
        ``noise``: run the clean input, patch in corrupted activations (m(patched) - m(clean)).
    batch_size : int, optional
        Most rows (patched prompt copies) per forward pass; default from a memory budget.
    resume : bool
        Resume each forward from the patched layer and the first changed position, reusing the base run's
        residual stream and keys/values, where the backend allows it (HookedTransformer); False: full forwards.
    progress : bool
        Show a progress bar over forward passes.

    Returns
    -------
    PatchResult
        ``scores`` with axes ``([component,] layer[, pos][, head])``: the mean over prompts of the metric change.
    """
    t0 = time.perf_counter()
    per = normalize_per(per)
    site_list = expand_sites(model, sites, per)
    ctx = prepare(model, batch, metric, site_list, direction, skip_caches=resume)
    grid = build_grid(model, site_list, per, ctx.n_pos, position_labels(model, ctx.batch, per))
    cells: list[Cell] = []
    spans: list[tuple[Site, int, int]] = []
    for s in site_list:
        masks = grid.masks(s)
        spans.append((s, len(cells), len(cells) + len(masks)))
        cells += [[(s.name, m)] for m in masks]
    effects = run_cells(ctx, cells, ctx.src_acts, batch_size=batch_size, progress=progress)
    per_prompt = scatter(grid, effects, spans)
    ctx.cost.seconds = time.perf_counter() - t0
    return make_result(ctx, grid, per_prompt, "activation")


def scatter(grid: Grid, effects: Tensor, spans: list[tuple[Site, int, int]]) -> Tensor:
    """Per-prompt grid ``[batch, *grid.shape]`` from cell-major effects ``[n_cells, batch]``."""
    n = int(effects.shape[1])
    out = grid.empty(n)
    for s, lo, hi in spans:
        idx = (slice(None),) + grid.index(s)
        out[idx] = effects[lo:hi].T.reshape(out[idx].shape)
    return out


def make_result(ctx: Context, grid: Grid, per_prompt: Tensor, method: str, **info: Any) -> PatchResult:
    return PatchResult(
        scores=per_prompt.mean(0),
        axes=grid.axes,
        labels=grid.labels,
        method=method,
        per=grid.per,
        direction=ctx.direction,
        sites=[s.name for s in grid.sites],
        aliases=[s.alias for s in grid.sites],
        clean=ctx.clean_metric,
        corrupted=ctx.corrupted_metric,
        per_prompt=per_prompt,
        cost=ctx.cost.as_dict(),
        info={
            "n_prompts": ctx.n,
            "task": getattr(ctx.batch, "task", None),
            "model": getattr(ctx.model, "mechwork_spec", type(ctx.model).__name__),
            "backend": type(ctx.model).__name__,
            **info,
        },
    )


def default_rows(ctx: Context) -> int:
    """Rows per forward from a ~0.5 GB float budget for logits and activations."""
    cfg = ctx.model.cfg
    per_row = ctx.n_pos * (int(cfg.d_vocab) + 16 * int(cfg.d_model) + int(cfg.n_heads) * ctx.n_pos)
    return int(max(1, min(4096, 2**27 // max(per_row, 1))))


def _overhead_rows(ctx: Context) -> float:
    """Fixed cost of one forward pass in rows of full work: ~1.5 ms of Python and dispatch on a CPU (~3e7 FLOP),
    kernel launches on an accelerator (~1e11 FLOP), over the FLOPs of one row (a prompt through every layer)."""
    cfg = ctx.model.cfg
    d, P, layers = int(cfg.d_model), ctx.n_pos, ctx.n_layers
    mlp = 0 if getattr(cfg, "attn_only", False) else 4 * d * int(getattr(cfg, "d_mlp", 0) or 0)
    per_token = layers * (8 * d * int(cfg.n_heads) * int(cfg.d_head) + mlp + 4 * P * d) + 2 * d * int(cfg.d_vocab)
    fixed = 3e7 if ctx.base_tokens.device.type == "cpu" else 1e11
    return fixed / max(P * per_token, 1)


def plan_chunks(
    layers: list[int],
    p0s: list[int],
    max_rows: int,
    n_layers: int,
    n_pos: int,
    overhead: float,
    p1s: list[int] | None = None,
) -> list[tuple[int, int]]:
    """Cut rows sorted by (layer, p0, p1) into contiguous chunks of at most ``max_rows``.

    A chunk resumes at its first row's layer ``l`` and its smallest ``p0``; it costs
    ``rows * ((p1 - p0 + 1) + (n_layers - l - 1) * (n_pos - p0))`` (``p1``: the last position layer ``l``
    must compute, ``n_pos - 1`` when unknown) plus a fixed ``overhead`` (in rows of full work). The cut
    minimising the total is found by dynamic programming over runs of equal keys.
    """
    if max_rows < 1:
        raise ConfigError(f"batch_size must be at least 1, got {max_rows}")
    p1s = p1s if p1s is not None else [n_pos - 1] * len(layers)
    pieces: list[tuple[int, int, int, int, int]] = []  # (start, end, layer, p0, p1)
    i = 0
    while i < len(layers):
        j = i
        key = (layers[i], p0s[i], p1s[i])
        while j < len(layers) and (layers[j], p0s[j], p1s[j]) == key and j - i < max_rows:
            j += 1
        pieces.append((i, j, *key))
        i = j
    full = float(n_layers * n_pos)
    best = [0.0] + [float("inf")] * len(pieces)
    back = [0] * (len(pieces) + 1)
    for j in range(1, len(pieces) + 1):
        rows, min_p, max_p1 = 0, n_pos, -1
        for i in range(j - 1, -1, -1):
            rows += pieces[i][1] - pieces[i][0]
            if rows > max_rows:
                break
            min_p = min(min_p, pieces[i][3])
            layer = pieces[i][2]
            if layer < pieces[j - 1][2]:  # rows at deeper layers leave this layer unchanged
                max_p1 = max((p[4] for p in pieces[i:j] if p[2] == layer), default=n_pos - 1)
            else:
                max_p1 = max(max_p1, pieces[i][4])
            work = (max_p1 - min_p + 1) + (n_layers - layer - 1) * (n_pos - min_p)
            cost = best[i] + rows * work + overhead * full
            if cost < best[j]:
                best[j], back[j] = cost, i
    cuts: list[tuple[int, int]] = []
    j = len(pieces)
    while j > 0:
        i = back[j]
        cuts.append((pieces[i][0], pieces[j - 1][1]))
        j = i
    return cuts[::-1]


def run_cells(
    ctx: Context,
    cells: list[Cell],
    sources: dict[str, Tensor],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Metric change ``[n_cells, batch]`` of patching each cell's masks with ``sources`` into the base run."""
    n, P = ctx.n, ctx.n_pos
    dev = ctx.base_tokens.device
    layer_of = {s.name: int(s.layer) for s in ctx.sites}  # type: ignore[arg-type]
    layout_of = {s.name: s.layout for s in ctx.sites}
    kind_of = {s.name: s.kind for s in ctx.sites}
    by_site: dict[str, tuple[list[int], list[Tensor]]] = {}
    for c, cell in enumerate(cells):
        for name, mask in cell:
            ids, masks = by_site.setdefault(name, ([], []))
            ids.append(c)
            masks.append(mask)
    active = torch.zeros(len(cells), n, dtype=torch.bool)
    first = torch.full((len(cells), n), P, dtype=torch.long)
    last = torch.full((len(cells), n), -1, dtype=torch.long)  # last position changed in the start layer
    cell_layer = torch.full((len(cells),), 10**9, dtype=torch.long)
    for name, (ids, _) in by_site.items():
        idx = torch.tensor(ids)
        cell_layer[idx] = torch.minimum(cell_layer[idx], torch.tensor(layer_of[name]))
    site_masks: dict[str, tuple[Tensor, Tensor]] = {}
    for name, (ids, masks) in by_site.items():
        idx = torch.tensor(ids)
        stack = torch.stack(masks).cpu()  # [k, P, H]
        local = torch.full((len(cells),), -1, dtype=torch.long)
        local[idx] = torch.arange(len(ids))
        site_masks[name] = (local, stack)
        hit = (stack[:, None] & ctx.changed(name, sources).cpu()[None]).any(-1)  # [k, n, P]
        act = hit.any(-1)
        fp = torch.where(act, hit.float().argmax(-1), torch.full_like(act, P, dtype=torch.long))
        lp = torch.where(act, P - 1 - hit.flip(-1).float().argmax(-1), torch.full_like(act, -1, dtype=torch.long))
        if kind_of[name] not in LOCAL_KINDS:
            lp = torch.where(act, torch.full_like(lp, P - 1), lp)
        at_start = (cell_layer[idx] == layer_of[name])[:, None]  # patches deeper down do not touch the start layer
        active[idx] |= act
        first[idx] = torch.minimum(first[idx], fp)
        last[idx] = torch.maximum(last[idx], torch.where(at_start, lp, torch.full_like(lp, -1)))
    effects = torch.zeros(len(cells), n)
    row_cell, row_prompt = active.nonzero(as_tuple=True)
    if len(row_cell) == 0:
        return effects
    # where each row's forward resumes: (layer, first changed position, last position of that layer to compute)
    row_layer = cell_layer[row_cell] if ctx.layer_skip else torch.full_like(row_cell, -1)
    row_p0 = first[row_cell, row_prompt] if ctx.pos_skip else torch.zeros_like(row_cell)
    row_p1 = last[row_cell, row_prompt] if ctx.pos_skip else torch.full_like(row_cell, P - 1)
    order = torch.argsort((row_layer * (P + 1) + row_p0) * (P + 1) + row_p1, stable=True)
    row_cell, row_prompt = row_cell[order], row_prompt[order]
    keys = list(zip(row_layer[order].tolist(), row_p0[order].tolist(), row_p1[order].tolist()))
    max_rows = batch_size or default_rows(ctx)
    chunks = plan_chunks(
        [max(k[0], 0) for k in keys],
        [k[1] for k in keys],
        max_rows,
        ctx.n_layers,
        P,
        _overhead_rows(ctx),
        [k[2] for k in keys],
    )
    for lo, hi in tqdm(chunks, desc="activation patching", disable=not progress, leave=False):
        layer = None if keys[lo][0] < 0 else keys[lo][0]
        p0 = min(k[1] for k in keys[lo:hi])
        p1 = max(k[2] for k in keys[lo:hi] if k[0] == keys[lo][0])
        cell_ids, prompts = row_cell[lo:hi], row_prompt[lo:hi].to(dev)
        hooks = []
        for name, (local, stack) in site_masks.items():
            loc = local[cell_ids]
            sel = (loc >= 0).nonzero().flatten()
            if len(sel) == 0:
                continue
            mask = stack[loc[sel]][:, p0:].to(dev)  # only the rows that patch this site
            rows = None if len(sel) == hi - lo else sel.to(dev)
            hooks.append((name, _patch_hook(mask, sources[name][prompts[sel.to(dev)]], layout_of[name], p0, rows)))
        with torch.no_grad():
            logits = forward_rows(ctx, prompts, layer, p0, hooks, p1=p1)
            m = eval_metric(ctx.metric, logits, ctx.batch.select(prompts), "patched run")
        ctx.account(hi - lo, layer, p0, p1=p1 if layer is not None and ctx.pos_skip else None)
        effects[cell_ids, prompts.cpu()] = (m - ctx.base_metric[prompts]).cpu()  # type: ignore[index]
    return effects


def _patch_hook(mask: Tensor, src: Tensor, layout: str, p0: int, rows: Tensor | None) -> Callable:
    """Forward hook writing ``src`` where ``mask`` is set, on all rows or only on ``rows``; the hooked
    activation covers positions ``p0 .. p0 + its length`` (a suffix, or a span on a two-stage forward)."""
    ax = pos_axis(layout)
    src = src.narrow(ax, p0, src.shape[ax] - p0)
    lay = mask_to_layout(mask, layout)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        n = act.shape[ax]
        s_, m_ = src.narrow(ax, 0, n).to(act.dtype), lay.narrow(ax, 0, n)
        if s_.shape[-1] != act.shape[-1]:  # attention patterns: keys also stop at the span's end
            s_ = s_[..., : act.shape[-1]]
        if rows is None:
            return torch.where(m_, s_, act)
        out = act.clone()
        out[rows] = torch.where(m_, s_, act[rows])
        return out

    return hook
