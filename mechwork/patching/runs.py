"""What every patching method shares: input validation, the base and source runs, and a forward pass that
resumes from a layer and a position.

Terminology: the *base* run is the one that gets patched (the corrupted run when denoising, the clean run
when noising); the *source* run supplies the patched-in activations. Scores are changes of the metric
relative to the base run.

Work that need not be redone is skipped on backends that allow it (``HookedTransformer``): a patch at layer
``l`` leaves every layer below ``l`` as in the base run (resume from the cached ``resid_pre``), and in a
causal model a patch that first changes position ``p`` leaves every position before ``p`` unchanged (run
only positions ``>= p`` and attend to the base run's cached keys and values). The TransformerBridge has no
``start_at_layer`` and always runs full forwards.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError, MechworkWarning, NonFiniteError, ShapeError
from ..core.hooks import capture, check_tokens, model_device, run_with_hooks
from ..core.kind import require_logits
from ..core.prompts import check_batch_vocab, token_str
from ..core.sites import Site, is_bridge
from ..core.sites import site as resolve_site
from .grid import to_canonical
from .live import check_live

Metric = Callable[[Tensor, Any], Tensor]
DIRECTIONS = ("denoise", "noise")
# Sites downstream of the attention mixing: a change at position p alters only position p of its own layer (the
# next layer's attention spreads it). Patches there need their layer computed only over the changed positions.
LOCAL_KINDS = frozenset(
    {
        "q",
        "q_input",
        "attn_scores",
        "pattern",
        "z",
        "result",
        "attn_out",
        "resid_mid",
        "ln2_scale",
        "ln2_normalized",
        "mlp_in",
        "mlp_pre",
        "mlp_post",
        "mlp_out",
        "resid_post",
    }
)


@dataclass
class Cost:
    """Work done by one method call."""

    forwards: int = 0
    backwards: int = 0
    rows: int = 0
    full_equiv: float = 0.0  # work in units of one full forward pass over the batch
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "forwards": self.forwards,
            "backwards": self.backwards,
            "rows": self.rows,
            "full_forward_equivalents": round(self.full_equiv, 3),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Context:
    """Validated inputs plus the cached base and source runs."""

    model: Any
    batch: Any
    metric: Metric
    direction: str
    sites: list[Site]
    base_tokens: Tensor
    src_tokens: Tensor
    base_acts: dict[str, Tensor] = field(default_factory=dict)
    src_acts: dict[str, Tensor] = field(default_factory=dict)
    base_metric: Tensor | None = None
    src_metric: Tensor | None = None
    base_logits: Tensor | None = None
    resid: dict[int, Tensor] = field(default_factory=dict)
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    layer_skip: bool = False
    pos_skip: bool = False
    cost: Cost = field(default_factory=Cost)

    @property
    def n(self) -> int:
        return int(self.base_tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.base_tokens.shape[1])

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def clean_metric(self) -> float:
        m = self.src_metric if self.direction == "denoise" else self.base_metric
        return float(m.mean())  # type: ignore[union-attr]

    @property
    def corrupted_metric(self) -> float:
        m = self.base_metric if self.direction == "denoise" else self.src_metric
        return float(m.mean())  # type: ignore[union-attr]

    def rows_mask(self, prompts: Tensor | None) -> Tensor | None:
        """The attention mask of base-run rows ``prompts`` (all rows for None); None without padding."""
        am = getattr(self.batch, "attention_mask", None)
        if am is None:
            return None
        return am if prompts is None else am[prompts.to(am.device)]

    def changed(self, name: str, sources: dict[str, Tensor] | None = None) -> Tensor:
        """Canonical ``[batch, pos, head]``: where the source activation differs from the base one."""
        src = (sources or self.src_acts)[name]
        return to_canonical(src != self.base_acts[name], _layout(self, name)).any(-1)

    def start(self, layer: int, p0: int) -> tuple[int | None, int]:
        """The (start layer, first position) a forward can actually resume from on this backend."""
        if not self.layer_skip:
            return None, 0
        return layer, (p0 if self.pos_skip else 0)

    def account(self, rows: int, layer: int | None, p0: int, *, p1: int | None = None, backward: bool = False) -> None:
        """Count one forward pass of ``rows`` rows resumed at ``(layer, p0)`` (layer ``layer`` computed only up to
        position ``p1`` when given), in units of full forward passes over the batch."""
        c = self.cost
        c.forwards += 1
        c.backwards += int(backward)
        c.rows += rows
        L, P = self.n_layers, self.n_pos
        if layer is None:
            work = L * P
        elif p1 is None:
            work = (L - layer) * (P - p0)
        else:
            work = (p1 - p0 + 1) + (L - layer - 1) * (P - p0)
        c.full_equiv += rows / self.n * work / (L * P) * (3.0 if backward else 1.0)


def _layout(ctx: Context, name: str) -> str:
    for s in ctx.sites:
        if s.name == name:
            return s.layout
    return resolve_site(ctx.model, name).layout


# --- input validation ---------------------------------------------------------------------------------------


def resolve_metric(metric: Any, batch: Any, model: Any = None) -> Metric:
    """A per-prompt metric ``(output, batch) -> [batch]`` from a callable, a task, or None (the batch's own metric,
    else its task's). A task metric on logits is refused for a model without a trained LM head."""
    from .. import tasks

    if metric is None:
        own = getattr(batch, "metric_fn", None)
        if own is not None:
            return own
        if getattr(batch, "task", None) not in tasks.names():
            raise ConfigError(
                f"the batch (task {getattr(batch, 'task', None)!r}) has no metric of its own and names no registered "
                "task: pass metric=(output, batch) -> per-prompt values, or build the batch with "
                "mechwork.tasks.from_pairs(model, ..., answers=[...], wrong=[...])"
            )
        metric = tasks.get(batch.task)
    if callable(metric) and not hasattr(metric, "prompts"):
        _check_arity(metric)
        return cast(Metric, metric)
    if hasattr(metric, "metric") and callable(metric.metric):
        if model is not None and getattr(metric, "needs_logits", False):
            require_logits(model, f"the metric of task {getattr(metric, 'name', '?')!r}")
        return cast(Metric, metric.metric)
    raise ConfigError(
        f"metric must be a callable (logits, batch) -> one value per prompt, or a task; got {type(metric).__name__}"
    )


def _check_arity(metric: Callable) -> None:
    try:
        sig = inspect.signature(metric)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        raise ConfigError(
            "metric must take (logits, batch) and return one value per prompt; for a logits-only metric pass "
            "`lambda logits, batch: f(logits)`"
        )


def check_batch(model: Any, batch: Any) -> Any:
    """Validate a prompt batch (clean and corrupted of equal shape, valid tokens) and move it to the model."""
    for attr in ("clean", "corrupted", "select"):
        if not hasattr(batch, attr):
            raise DataError(
                "batch must be a PromptBatch with clean and corrupted tokens: your own prompts through "
                "mechwork.tasks.from_pairs(model, clean=[...], corrupted=[...], answers=[...], wrong=[...]), or a "
                f"task's through mechwork.tasks.get(name).prompts(n, model=model); got {type(batch).__name__} without .{attr}"
            )
    check_batch_vocab(model, batch)
    clean, corrupted = batch.clean, batch.corrupted
    if not isinstance(clean, Tensor) or not isinstance(corrupted, Tensor):
        raise DataError("batch.clean and batch.corrupted must be token tensors")
    if clean.shape != corrupted.shape:
        raise ShapeError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} differ in shape; "
            "patching needs position-aligned pairs of equal length"
        )
    check_tokens(model, clean, what="batch.clean")
    check_tokens(model, corrupted, what="batch.corrupted")
    if clean.ndim != 2:
        raise ShapeError(f"batch tokens must be [batch, pos], got {tuple(clean.shape)}")
    dev = model_device(model)
    return batch.to(dev) if hasattr(batch, "to") else batch


GAP_TOLERANCE = 1e-3


def warn_small_gap(clean: Tensor, corrupted: Tensor) -> None:
    """Warn when the clean and corrupted metrics (per prompt) cannot be told apart: a mean gap below 1e-3 of the
    metric's scale, or (with several prompts) within two standard errors of zero. Every score is then a fraction
    of noise, and normalised scores (``result.normalized()``) mean nothing."""
    d = (clean - corrupted).double()
    gap = float(d.mean())
    scale = max(1.0, float(clean.abs().mean()), float(corrupted.abs().mean()))
    se = float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else 0.0
    if abs(gap) > GAP_TOLERANCE * scale and abs(gap) > 2 * se:
        return
    why = "nearly coincide" if abs(gap) <= GAP_TOLERANCE * scale else "differ by less than two standard errors"
    warnings.warn(
        f"the clean and corrupted metrics {why} (mean clean {float(clean.mean()):.4g}, corrupted "
        f"{float(corrupted.mean()):.4g}, gap {gap:.2g} +- {se:.2g} over {d.numel()} prompts): the corruption does not "
        "measurably change the metric, so patching scores and their fractions of the gap are noise. Check the prompts, "
        "answers and the model (an untrained model has no gap to explain)",
        MechworkWarning,
        stacklevel=4,
    )


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"direction must be 'denoise' (patch clean into corrupted) or 'noise' (corrupted into clean), got {direction!r}"
        )
    return direction


def eval_metric(metric: Metric, logits: Tensor, batch: Any, what: str) -> Tensor:
    """Call the metric and check it returns one finite value per prompt."""
    n = int(logits.shape[0])
    out = metric(logits, batch)
    if not isinstance(out, Tensor):
        raise ShapeError(f"metric must return a tensor with one value per prompt, got {type(out).__name__} ({what})")
    if out.shape != (n,):
        hint = " (a scalar: return the per-prompt values, not their .mean())" if out.ndim == 0 else ""
        raise ShapeError(
            f"metric must return one value per prompt, shape ({n},); got shape {tuple(out.shape)}{hint} ({what})"
        )
    out = out.float()
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()[:8]
        raise NonFiniteError(f"metric is NaN/inf for {int(bad.sum())} of {n} prompts ({what}), e.g. rows {idx}")
    return out


def position_labels(model: Any, batch: Any, per: str | None = None) -> list[str]:
    """``"i token"`` per position, from the token most prompts share there (``*`` marks positions that vary).

    With a per-position ``per``, warns when positions do not mean the same across the batch (prompts of
    different lengths or prediction positions): a cell then mixes different tokens.
    """
    toks = batch.clean.cpu()
    out = []
    for i in range(toks.shape[1]):
        vals, counts = toks[:, i].unique(return_counts=True)
        out.append(f"{i} {token_str(model, int(vals[counts.argmax()]))}" + ("" if len(vals) == 1 else "*"))
    aligned = getattr(batch, "aligned", True)
    if per is not None and "position" in per and not aligned:
        warnings.warn(
            "per-position scores on prompts whose positions differ across the batch (different lengths or "
            "prediction positions): each position cell averages over different tokens. Use prompts of one "
            "template (e.g. tasks.get('ioi', template=0)) or per='layer'/'head'",
            MechworkWarning,
            stacklevel=3,
        )
    return out


# --- runs ------------------------------------------------------------------------------------------------


def skip_support(model: Any) -> tuple[bool, bool]:
    """Whether the model can resume a forward from a layer (and, on top, from a position)."""
    if is_bridge(model):
        return False, False
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False, False
    if "start_at_layer" not in params:
        return False, False
    cfg = model.cfg
    layer_ok = getattr(cfg, "positional_embedding_type", "standard") in ("standard", "rotary")
    pos_ok = (
        layer_ok
        and "past_kv_cache" in params
        and getattr(cfg, "attention_dir", "causal") == "causal"
        and getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads)
        and not getattr(cfg, "use_local_attn", False)
        and "local" not in (getattr(cfg, "attn_types", None) or [])
        and not getattr(cfg, "use_logn_attn", False)
        and not getattr(cfg, "use_attention_sinks", False)
    )
    return layer_ok, pos_ok


def capture_run(
    model: Any, tokens: Tensor, names: Sequence[str], attention_mask: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """One full forward: the output (logits, or a headless model's last hidden state) and activations at ``names``."""
    with torch.no_grad():
        return capture(model, tokens, list(dict.fromkeys(names)), output=True, attention_mask=attention_mask)


def prepare(
    model: Any,
    batch: Any,
    metric: Any,
    sites: list[Site],
    direction: str,
    *,
    skip_caches: bool,
    base_acts: bool = True,
) -> Context:
    """Validate, then run the base and source passes (caching what resuming forwards need)."""
    batch = check_batch(model, batch)
    metric_fn = resolve_metric(metric, batch, model)
    direction = check_direction(direction)
    base, src = (batch.corrupted, batch.clean) if direction == "denoise" else (batch.clean, batch.corrupted)
    check_live(model, sites, base[:1])
    layer_skip, pos_skip = skip_support(model) if skip_caches else (False, False)
    ctx = Context(model, batch, metric_fn, direction, sites, base, src, layer_skip=layer_skip, pos_skip=pos_skip)
    names = [s.name for s in sites]
    extra: list[str] = []
    if layer_skip:
        extra += [f"blocks.{i}.hook_resid_pre" for i in range(ctx.n_layers)]
    if pos_skip:
        extra += [f"blocks.{i}.attn.hook_{x}" for i in range(ctx.n_layers) for x in "kv"]
        extra += [f"blocks.{ctx.n_layers - 1}.hook_resid_post"]
    n = int(base.shape[0])
    what = ("corrupted", "clean") if direction == "denoise" else ("clean", "corrupted")
    # the base and source runs share one forward pass (stacked along the batch)
    tokens = torch.cat([base, src]) if base_acts else src
    am = ctx.rows_mask(None)
    am = None if am is None else (torch.cat([am, am]) if base_acts else am)
    logits, acts = capture_run(model, tokens, names + (extra if base_acts else []), am)
    if base_acts:
        ctx.base_logits = logits[:n]
        ctx.base_acts = {k: acts[k][:n] for k in names}
        ctx.resid = {i: acts[f"blocks.{i}.hook_resid_pre"][:n] for i in range(ctx.n_layers)} if layer_skip else {}
        if pos_skip:  # the input of the final LayerNorm, as if it were the residual before layer n_layers
            ctx.resid[ctx.n_layers] = acts[f"blocks.{ctx.n_layers - 1}.hook_resid_post"][:n]
        ctx.kv = (
            {i: (acts[f"blocks.{i}.attn.hook_k"][:n], acts[f"blocks.{i}.attn.hook_v"][:n]) for i in range(ctx.n_layers)}
            if pos_skip
            else {}
        )
        ctx.base_metric = eval_metric(metric_fn, logits[:n], batch, f"{what[0]} run")
    ctx.src_acts = {k: acts[k][-n:] for k in names}
    ctx.src_metric = eval_metric(metric_fn, logits[-n:], batch, f"{what[1]} run")
    if base_acts:
        pair = (ctx.src_metric, ctx.base_metric) if direction == "denoise" else (ctx.base_metric, ctx.src_metric)
        warn_small_gap(*pair)  # type: ignore[arg-type]
    ctx.cost.forwards += 1
    ctx.cost.rows += int(tokens.shape[0])
    ctx.cost.full_equiv += 1 + int(base_acts)
    return ctx


def forward_rows(
    ctx: Context,
    prompts: Tensor,
    layer: int | None,
    p0: int,
    hooks: list[tuple[str, Callable]],
    *,
    p1: int | None = None,
) -> Tensor:
    """Logits ``[rows, pos, vocab]`` of base-run rows ``prompts`` with ``hooks`` on, resuming at ``(layer, p0)``
    as returned by :meth:`Context.start` (``layer`` None: a full forward from the tokens).

    With ``p1`` (patches at ``layer`` change nothing of that layer beyond position ``p1``, see
    :data:`LOCAL_KINDS`), layer ``layer`` runs over positions ``p0..p1`` only and the later layers over ``p0..``
    with the base run's residual after ``p1``.
    """
    model = ctx.model
    if layer is None:
        return run_with_hooks(model, ctx.base_tokens[prompts], hooks, attention_mask=ctx.rows_mask(prompts))
    two_stage = p1 is not None and ctx.pos_skip and p1 < ctx.n_pos - 1
    with _direct_hooks(model, hooks):
        if not two_stage:
            resid = ctx.resid[layer][prompts, p0:]
            logits = model(resid, start_at_layer=layer, past_kv_cache=_kv_cache(ctx, prompts, layer, p0))
        else:
            assert p1 is not None  # two_stage says so
            out = model(
                ctx.resid[layer][prompts, p0 : p1 + 1],
                start_at_layer=layer,
                stop_at_layer=layer + 1,
                past_kv_cache=_kv_cache(ctx, prompts, layer, p0),
            )
            if layer + 1 == ctx.n_layers:  # nothing mixes positions any more: unembed the changed span only
                span = model(out, start_at_layer=layer + 1)
                logits = torch.cat([span, ctx.base_logits[prompts, p1 + 1 :].to(span.dtype)], dim=1)  # type: ignore[index]
            else:
                resid = torch.cat([out, ctx.resid[layer + 1][prompts, p1 + 1 :]], dim=1)
                logits = model(resid, start_at_layer=layer + 1, past_kv_cache=_kv_cache(ctx, prompts, layer + 1, p0))
    if p0 > 0:
        logits = torch.cat([ctx.base_logits[prompts, :p0].to(logits.dtype), logits], dim=1)  # type: ignore[index]
    return logits


@contextlib.contextmanager
def _direct_hooks(model: Any, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Forward hooks registered straight on HookedTransformer's hook points (which have no tensor conversions),
    removed by handle: ``model.hooks()`` resets every hook point of the model on exit, a large fixed cost per
    forward on small models. Only used on the resume path, i.e. on HookedTransformer."""
    handles = []
    try:
        for name, fn in hooks:
            handles.append(
                model.hook_dict[name].register_forward_hook(lambda module, _inp, out, fn=fn: fn(out, hook=module))
            )
        yield
    finally:
        for h in handles:
            h.remove()


def _kv_cache(ctx: Context, prompts: Tensor, layer: int, p0: int) -> Any:
    if p0 == 0:
        return None
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries: list[Any] = [None] * layer
    for i in range(layer, ctx.n_layers):
        k, v = ctx.kv[i]
        entries.append(TransformerLensKeyValueCacheEntry(k[prompts, :p0], v[prompts, :p0], frozen=True))
    mask = torch.ones(len(prompts), p0, dtype=torch.int, device=prompts.device)
    return TransformerLensKeyValueCache(entries, mask, frozen=True)
