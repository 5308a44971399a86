"""LRP propagation rules as forward hooks that keep every forward value and change only the backward pass.

Each rule rewrites an activation ``out`` as ``out.detach() + (y - y.detach())`` where ``y`` is a linear
function of the layer's inputs with detached coefficients: the value is ``out`` bit for bit (``y - y.detach()``
is exactly zero), and the gradient that flows back is the LRP coefficient instead of the local derivative.

==============  ==========================================================  ====================================
rule            backward                                                     hooks
==============  ==========================================================  ====================================
``layernorm``   LN-rule (Ali et al. 2022): the normalising scale is constant  ``*.hook_scale`` detached
``identity``    Identity-rule (Jafari et al. 2024): the activation function  ``mlp.hook_pre`` -> ``mlp.hook_post``
                passes relevance through, coefficient act(x)/x
``half``        Half-rule: a gated MLP's product splits relevance 1/2, 1/2     ``mlp.hook_post`` (gated MLPs)
``attention``   AH-rule (CP-LRP): attention patterns are constants, no       ``attn.hook_q``, ``attn.hook_k``
                relevance into queries and keys                               detached
==============  ==========================================================  ====================================

The AH-rule detaches queries and keys rather than ``hook_pattern``: the backward pass is the same (the
pattern is a function of q and k only), and on the TransformerBridge ``hook_pattern`` is a read-only tap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor

from ..core.errors import ConfigError, SiteError

RULES = ("layernorm", "identity", "half", "attention")
DEFAULT_RULES = ("layernorm", "identity", "half")  # the RelP reference code's default (AH-rule available)
_ALIASES = {
    "ln": "layernorm",
    "ln-rule": "layernorm",
    "ln_rule": "layernorm",
    "layernorm": "layernorm",
    "norm": "layernorm",
    "identity": "identity",
    "identity-rule": "identity",
    "identity_rule": "identity",
    "half": "half",
    "half-rule": "half",
    "half_rule": "half",
    "attention": "attention",
    "ah": "attention",
    "ah-rule": "attention",
    "ah_rule": "attention",
    "cp-lrp": "attention",
}
EPS = 1e-6  # the Identity-rule's stabiliser: x + (1[x == 0] + sign(x)) * EPS
Hook = tuple[str, Callable]


def parse_rules(rules: str | Sequence[str] | None) -> tuple[str, ...]:
    """Canonical rule names (accepts the paper's ``"LN-rule"``, ``"AH-rule"``, ...)."""
    if rules is None:
        return DEFAULT_RULES
    items = [rules] if isinstance(rules, str) else list(rules)
    out: list[str] = []
    for r in items:
        key = _ALIASES.get(str(r).strip().lower())
        if key is None:
            raise ConfigError(
                f"unknown LRP rule {r!r}; rules are {', '.join(RULES)} (or LN-rule, Identity-rule, Half-rule, AH-rule)"
            )
        if key not in out:
            out.append(key)
    return tuple(out)


def _keep_value(out: Tensor, y: Tensor) -> Tensor:
    return out.detach() + (y - y.detach())


def _detach(t: Tensor, hook: Any = None) -> Tensor:
    return t.detach()


def _stabilise(x: Tensor) -> Tensor:
    return x + ((x == 0).to(x.dtype) + x.sign()) * EPS


def lrp_hooks(model: Any, rules: str | Sequence[str] | None = None) -> tuple[list[Hook], list[Hook]]:
    """Hooks realising ``rules`` on ``model``, as ``(before, after)``.

    ``before`` hooks replace activations and must run before any hook that reads gradients at the same hook
    point; ``after`` hooks only record inputs and must run after hooks that modify them. Register
    ``before + your_hooks + after``.

    Raises
    ------
    SiteError
        If the model lacks the hook points a rule needs (e.g. LayerNorms without ``hook_scale``).
    ConfigError
        For a gated MLP whose activation function cannot be found (Identity-rule).
    """
    rules = parse_rules(rules)
    cfg = model.cfg
    names = set(model.hook_dict)
    n_layers = int(cfg.n_layers)
    before: list[Hook] = []
    after: list[Hook] = []
    if "layernorm" in rules:
        scales = sorted(n for n in names if n.endswith("hook_scale"))
        if not scales and getattr(cfg, "normalization_type", None) is not None:
            raise SiteError(
                f"LN-rule: this model normalises ({cfg.normalization_type}) but has no *.hook_scale hook points"
            )
        before += [(n, _detach) for n in scales]
    if "attention" in rules:
        qk = [f"blocks.{i}.attn.hook_{x}" for i in range(n_layers) for x in "qk"]
        missing = [n for n in qk if n not in names]
        if missing:
            raise SiteError(f"AH-rule: the model has no hook points {missing[:4]}")
        before += [(n, _detach) for n in qk]
    if ("identity" in rules or "half" in rules) and not getattr(cfg, "attn_only", False):
        for i in range(n_layers):
            b, a = _mlp_rule(model, i, rules, names)
            before += b
            after += a
    return before, after


def _mlp_rule(model: Any, layer: int, rules: tuple[str, ...], names: set[str]) -> tuple[list[Hook], list[Hook]]:
    p = f"blocks.{layer}.mlp."
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    identity, half = "identity" in rules, "half" in rules and gated
    if not (identity or half):
        return [], []
    need = [p + "hook_pre", p + "hook_post"] + ([p + "hook_pre_linear"] if gated and identity else [])
    missing = [n for n in need if n not in names]
    if missing:
        raise SiteError(f"{'Identity' if identity else 'Half'}-rule: the model has no hook points {missing}")
    stash: dict[str, Tensor] = {}

    def keep(key: str) -> Callable:
        def hook(t: Tensor, hook: Any = None) -> None:
            stash[key] = t

        return hook

    if not gated:

        def post_identity(post: Tensor, hook: Any = None) -> Tensor:
            x = stash.pop("pre")
            return _keep_value(post, x * (post / _stabilise(x)).detach())

        return [(p + "hook_post", post_identity)], [(p + "hook_pre", keep("pre"))]
    if not identity:  # Half-rule alone: the product's gradient halves, the activation keeps its derivative
        return [(p + "hook_post", lambda t, hook=None: _keep_value(t, t * 0.5))], []
    act = getattr(_block_mlp(model, layer), "act_fn", None)
    if act is None:
        raise ConfigError(
            f"Identity-rule on the gated MLP of layer {layer}: cannot find its activation function (mlp.act_fn)"
        )
    factor = 0.5 if "half" in rules else 1.0

    def post_gated(post: Tensor, hook: Any = None) -> Tensor:
        pre, lin = stash.pop("pre"), stash.pop("lin")
        g = act(pre.detach())
        y = pre * (factor * lin.detach() * g / _stabilise(pre.detach())).detach() + lin * (factor * g).detach()
        return _keep_value(post, y)

    return [(p + "hook_post", post_gated)], [(p + "hook_pre", keep("pre")), (p + "hook_pre_linear", keep("lin"))]


def _block_mlp(model: Any, layer: int) -> Any:
    try:
        return model.blocks[layer].mlp
    except (AttributeError, IndexError, TypeError):
        return None


def frozen_names(model: Any) -> list[str]:
    """Hook points whose values :func:`frozen_hooks` needs from a cached run."""
    ends = ("hook_scale", "hook_pattern", "mlp.hook_pre", "mlp.hook_post")
    return sorted(n for n in model.hook_dict if n.endswith(ends))


def frozen_hooks(
    model: Any, cache: Any, rules: str | Sequence[str] | None = ("layernorm", "identity", "attention")
) -> list[Hook]:
    """Forward hooks that hold what the LRP ``rules`` treat as constants at their values in a cached run.

    LN-rule: every LayerNorm scale; AH-rule: every attention pattern; Identity-rule: each MLP's activation
    replaced by the linear map ``x -> x * act(x_c) / x_c`` (stabilised as in the rule). With all three on, a
    HookedTransformer becomes linear in any single activation, and relevance patching with the same rules is
    exactly activation patching of this frozen model (for a metric linear in the logits): the check that the
    rules are implemented as stated (``benchmarks/relp_study.py``, ``tests/test_lrp_conservation.py``).

    Parameters
    ----------
    cache : mapping
        ``name -> tensor`` for :func:`frozen_names` (e.g. ``model.run_with_cache(tokens, names_filter=...)``).
    """
    rules = parse_rules(rules)
    if "half" in rules or getattr(model.cfg, "gated_mlp", False):
        raise ConfigError("frozen_hooks covers the LN-, Identity- and AH-rules of non-gated MLPs only")
    hooks: list[Hook] = []
    for name in frozen_names(model):
        if (name.endswith("hook_pattern") and "attention" in rules) or (
            name.endswith("hook_scale") and "layernorm" in rules
        ):
            hooks.append((name, lambda t, hook=None, v=cache[name]: v))
    if "identity" in rules and not getattr(model.cfg, "attn_only", False):
        stash: dict[str, Tensor] = {}
        for layer in range(int(model.cfg.n_layers)):
            p = f"blocks.{layer}.mlp."
            coef = cache[p + "hook_post"] / _stabilise(cache[p + "hook_pre"])

            def keep(t: Tensor, hook: Any = None, p: str = p) -> None:
                stash[p] = t

            hooks += [(p + "hook_pre", keep), (p + "hook_post", lambda t, hook=None, p=p, c=coef: stash[p] * c)]
    return hooks


@contextlib.contextmanager
def lrp(model: Any, rules: str | Sequence[str] | None = None) -> Iterator[Any]:
    """Context manager: run ``model`` with LRP rules on (forward values unchanged, backward = LRP).

    >>> with lrp(model):
    ...     metric(model(tokens), batch).sum().backward()   # gradients are now LRP coefficients
    """
    before, after = lrp_hooks(model, rules)
    with model.hooks(fwd_hooks=before + after):
        yield model


__all__ = ["RULES", "DEFAULT_RULES", "parse_rules", "lrp_hooks", "lrp", "frozen_hooks", "frozen_names"]
