"""Sites a backend only lets you *read*: refuse them before patching would silently do nothing.

Observed on TransformerLens 3.9's TransformerBridge (compatibility mode): ``attn.hook_pattern`` and
``attn.hook_attn_scores`` are taps whose returned value the forward pass does not use, and ``hook_resid_mid`` is
an alias of ``ln2.hook_in``, so a value written there reaches the MLP but not the residual stream.
``transformer_lens.patching`` on the bridge then returns zero effects for patterns and wrong ones for resid_mid.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import SiteError
from ..core.hooks import capture, run_with_hooks
from ..core.kind import is_causal
from ..core.sites import Site, is_bridge

_LIVE: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
# (site kind, downstream hook that must change by exactly the patch, hook whose change is subtracted)
_RESIDUAL_CHECKS = {
    "resid_pre": ("hook_resid_mid", "hook_attn_out"),
    "resid_mid": ("hook_resid_post", "hook_mlp_out"),
    "attn_out": ("hook_resid_mid", None),
    "mlp_out": ("hook_resid_post", None),
}


def check_live(model: Any, sites: Sequence[Site], tokens: Tensor) -> None:
    """Refuse sites whose hook a backend only lets you read (TransformerBridge).

    Two checks, run once per model and site: the hook's output must reach the logits (on the bridge
    ``attn.hook_pattern`` / ``hook_attn_scores`` are taps whose returned value is not used), and a change
    written at a residual-stream site must reach the next residual site unchanged (on the bridge
    ``hook_resid_mid`` is an alias of ``ln2.hook_in``, so a patch there reaches the MLP but not the stream).
    """
    if not is_bridge(model):
        return
    seen = _LIVE.setdefault(model, {})
    todo = [s for s in sites if s.name not in seen]
    if todo:
        _probe_reach(model, todo, tokens, seen)
        for s in todo:
            if s.name not in seen:
                seen[s.name] = _residual_check(model, s, tokens)
    bad = [(s, seen[s.name]) for s in sites if seen[s.name]]
    if bad:
        lines = "; ".join(f"{s.alias}: {why}" for s, why in bad)
        raise SiteError(
            f"these sites cannot be patched on this TransformerBridge: {lines}. Patch other sites "
            "(resid_pre/resid_post, attn_out, mlp_out, z, q, k, v) or load the model with backend='hooked'"
        )


def _probe_reach(model: Any, sites: Sequence[Site], tokens: Tensor, seen: dict[str, str]) -> None:
    probes: dict[str, Tensor] = {}

    def make(name: str) -> Callable:
        def hook(t: Tensor, hook: Any = None) -> Tensor:
            probes[name] = torch.zeros_like(t, requires_grad=True)
            return t + probes[name]

        return hook

    with torch.enable_grad():
        logits = run_with_hooks(model, tokens, [(s.name, make(s.name)) for s in sites])
        found = [s for s in sites if s.name in probes]
        grads = torch.autograd.grad(logits.float().pow(2).sum(), [probes[s.name] for s in found], allow_unused=True)
    got = {s.name: g for s, g in zip(found, grads)}
    for s in sites:
        if got.get(s.name) is None:
            seen[s.name] = "its hook is read-only here (the value a hook returns is not used by the forward pass)"


def _residual_check(model: Any, s: Site, tokens: Tensor) -> str:
    if not is_causal(model):  # post-LN encoders (BERT): resid_mid = LN(resid_pre + attn_out), no additive identity
        return ""
    rule = _RESIDUAL_CHECKS.get(s.kind)
    if s.kind == "resid_post":
        rule = ("hook_resid_pre", None) if s.layer + 1 < int(model.cfg.n_layers) else None  # type: ignore[operator]
    if rule is None:
        return ""
    nxt_layer = s.layer + 1 if s.kind == "resid_post" else s.layer  # type: ignore[operator]
    target, minus = rule
    names = [f"blocks.{nxt_layer}.{target}"] + ([f"blocks.{s.layer}.{minus}"] if minus else [])
    if any(n not in model.hook_dict for n in names):
        return ""
    gen = torch.Generator(device="cpu").manual_seed(0)
    delta: dict[str, Tensor] = {}

    def perturb(t: Tensor, hook: Any = None) -> Tensor:
        d = torch.randn(t.shape, generator=gen).to(t.device, t.dtype) * (t.detach().float().std() * 0.1 + 1e-3)
        delta["d"] = d
        return t + d

    before = capture(model, tokens, names)
    store = capture(model, tokens, names, hooks=[(s.name, perturb)])
    change = store[names[0]] - before[names[0]]
    if minus:
        change = change - (store[names[1]] - before[names[1]])
    err = float((change - delta["d"]).abs().max())
    if err > 1e-3 * float(delta["d"].abs().max()) + 1e-5:
        return (
            f"a change written there does not reach {names[0]} unchanged (it is not the residual stream itself, "
            "e.g. an alias of the next LayerNorm's input)"
        )
    return ""
