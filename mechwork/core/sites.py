"""Activation sites: every hook point of a model, with a stable name, its shape and its layer.

A site is addressed by its full TransformerLens hook name (``blocks.3.hook_resid_post``,
``blocks.1.attn.hook_z``) or by a short alias ``kind.layer`` (``resid_post.3``, ``z.1``, ``mlp_post.0``;
TransformerLens's ``get_act_name`` short names such as ``post.0`` and ``("resid_pre", 2)`` also resolve).
Both backends (``HookedTransformer`` and ``TransformerBridge``) list the same legacy names, so code that
names sites works on either.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SiteError

# kind -> (suffix after "blocks.L.", per-token shape template, layout, gate flag or None)
# Shape symbols: D = d_model, H = n_heads, KV = key/value heads, E = d_head, M = d_mlp, "pos" = key positions.
_BLOCK_KINDS: dict[str, tuple[str, tuple[str, ...], str, str | None]] = {
    "resid_pre": ("hook_resid_pre", ("D",), "batch pos d_model", None),
    "resid_mid": ("hook_resid_mid", ("D",), "batch pos d_model", None),
    "resid_post": ("hook_resid_post", ("D",), "batch pos d_model", None),
    "attn_out": ("hook_attn_out", ("D",), "batch pos d_model", None),
    "mlp_out": ("hook_mlp_out", ("D",), "batch pos d_model", None),
    "q": ("attn.hook_q", ("H", "E"), "batch pos head d_head", None),
    "k": ("attn.hook_k", ("KV", "E"), "batch pos head d_head", None),
    "v": ("attn.hook_v", ("KV", "E"), "batch pos head d_head", None),
    "z": ("attn.hook_z", ("H", "E"), "batch pos head d_head", None),
    "pattern": ("attn.hook_pattern", ("H", "pos"), "batch head q_pos k_pos", None),
    "attn_scores": ("attn.hook_attn_scores", ("H", "pos"), "batch head q_pos k_pos", None),
    "result": ("attn.hook_result", ("H", "D"), "batch pos head d_model", "use_attn_result"),
    "mlp_pre": ("mlp.hook_pre", ("M",), "batch pos d_mlp", None),
    "mlp_post": ("mlp.hook_post", ("M",), "batch pos d_mlp", None),
    "q_input": ("hook_q_input", ("H", "D"), "batch pos head d_model", "use_split_qkv_input"),
    "k_input": ("hook_k_input", ("H", "D"), "batch pos head d_model", "use_split_qkv_input"),
    "v_input": ("hook_v_input", ("H", "D"), "batch pos head d_model", "use_split_qkv_input"),
    "attn_in": ("hook_attn_in", ("H", "D"), "batch pos head d_model", "use_attn_in"),
    "mlp_in": ("hook_mlp_in", ("D",), "batch pos d_model", "use_hook_mlp_in"),
    "ln1_scale": ("ln1.hook_scale", ("1",), "batch pos 1", None),
    "ln1_normalized": ("ln1.hook_normalized", ("D",), "batch pos d_model", None),
    "ln2_scale": ("ln2.hook_scale", ("1",), "batch pos 1", None),
    "ln2_normalized": ("ln2.hook_normalized", ("D",), "batch pos d_model", None),
}
_GLOBAL_KINDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "embed": ("hook_embed", ("D",), "batch pos d_model"),
    "pos_embed": ("hook_pos_embed", ("D",), "batch pos d_model"),
    "ln_final_scale": ("ln_final.hook_scale", ("1",), "batch pos 1"),
    "ln_final_normalized": ("ln_final.hook_normalized", ("D",), "batch pos d_model"),
}
# TransformerLens get_act_name short names that differ from ours
_TL_ALIASES = {
    "pre": "mlp_pre",
    "post": "mlp_post",
    "scores": "attn_scores",
    "attn": "pattern",
    "normalized": "ln_final_normalized",
    "scale": "ln_final_scale",
}
_SETTERS = {
    "use_attn_result": "set_use_attn_result",
    "use_split_qkv_input": "set_use_split_qkv_input",
    "use_attn_in": "set_use_attn_in",
    "use_hook_mlp_in": "set_use_hook_mlp_in",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SUFFIX_TO_KIND = {v[0]: k for k, v in _BLOCK_KINDS.items()}
_GLOBAL_NAME_TO_KIND = {v[0]: k for k, v in _GLOBAL_KINDS.items()}


@dataclass(frozen=True)
class Site:
    """One activation site.

    Attributes
    ----------
    name : str
        Full hook name, e.g. ``"blocks.3.hook_resid_post"``.
    shape : tuple
        Shape of the activation per token (without the batch and position axes), e.g. ``(128,)`` for the
        residual stream or ``(4, 32)`` for ``hook_z``; attention patterns give ``(n_heads, "pos")``.
    layer : int or None
        Block index, ``None`` for sites outside the blocks (embeddings, final LayerNorm).
    kind : str
        ``resid_pre``, ``z``, ``mlp_post``, ... (``other`` for backend-specific hook points).
    layout : str
        Axis names of the hooked tensor, e.g. ``"batch pos head d_head"``.
    gate : str or None
        The model config flag that must be on for the hook to fire (e.g. ``use_attn_result``).
    """

    name: str
    shape: tuple[Any, ...] | None
    layer: int | None
    kind: str
    layout: str = ""
    gate: str | None = None

    @property
    def alias(self) -> str:
        """Short name ``kind.layer`` (``kind`` alone for global sites)."""
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def d(self) -> int | None:
        """Width of one token's activation when flattened (``None`` for attention patterns/unknown)."""
        if self.shape is None or any(not isinstance(s, int) for s in self.shape):
            return None
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def pos_axis(self) -> int:
        """Axis of the (query) position in the hooked tensor."""
        return 2 if self.layout.startswith("batch head") else 1

    def stop_layer(self, n_layers: int) -> int | None:
        """Smallest ``stop_at_layer`` whose forward pass still reaches this site (``None``: full pass)."""
        if self.layer is not None:
            return self.layer + 1
        if self.kind in ("embed", "pos_embed"):
            return 0 if n_layers > 0 else None
        return None

    def __str__(self) -> str:
        return self.name


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge``."""
    return type(model).__name__ == "TransformerBridge" or any(
        c.__name__ == "TransformerBridge" for c in type(model).__mro__
    )


def _dims(model: Any) -> dict[str, int]:
    cfg = model.cfg
    H = int(cfg.n_heads)
    kv = getattr(cfg, "n_key_value_heads", None) or H
    if getattr(cfg, "ungroup_grouped_query_attention", False):
        kv = H
    return {
        "D": int(cfg.d_model),
        "H": H,
        "KV": int(kv),
        "E": int(cfg.d_head),
        "M": int(getattr(cfg, "d_mlp", 0) or 0),
        "1": 1,
    }


def _shape(template: tuple[str, ...], dims: dict[str, int]) -> tuple[Any, ...]:
    return tuple(dims[t] if t in dims else t for t in template)


def _hook_names(model: Any) -> list[str]:
    hd = getattr(model, "hook_dict", None)
    if hd is None:
        raise SiteError(f"{type(model).__name__} has no hook points (hook_dict); load it with mechwork.load_model")
    return list(hd.keys())


def _make(model: Any, name: str, dims: dict[str, int]) -> Site:
    m = _BLOCK_RE.match(name)
    if m:
        layer, suffix = int(m.group(1)), m.group(2)
        kind = _SUFFIX_TO_KIND.get(suffix)
        if kind is None:
            return Site(name, None, layer, "other")
        _, tmpl, layout, gate = _BLOCK_KINDS[kind]
        if kind in ("mlp_pre", "mlp_post") and not dims["M"]:
            return Site(name, None, layer, kind, layout, gate)
        return Site(name, _shape(tmpl, dims), layer, kind, layout, gate)
    kind = _GLOBAL_NAME_TO_KIND.get(name)
    if kind is None:
        return Site(name, None, None, "other")
    _, tmpl, layout = _GLOBAL_KINDS[kind]
    return Site(name, _shape(tmpl, dims), None, kind, layout)


def sites(model: Any, *, include_other: bool = False) -> list[Site]:
    """List the activation sites of ``model`` with their per-token shapes.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    include_other : bool
        Also list backend-specific hook points that have no TransformerLens legacy name (on the bridge:
        ``blocks.0.attn.q.hook_out`` ...). They resolve with :func:`site` either way.

    Returns
    -------
    list of Site
        In forward order: embeddings, then each block, then the final LayerNorm.
    """
    dims = _dims(model)
    out = [_make(model, n, dims) for n in _hook_names(model)]
    if not include_other:
        out = [s for s in out if s.kind != "other"]

    def order(s: Site) -> tuple[int, int]:
        if s.layer is not None:
            return (1 + s.layer, 0)
        return (0, 0) if s.kind in ("embed", "pos_embed") else (10**6, 0)

    return sorted(out, key=order)


def _alias_table(model: Any) -> dict[str, str]:
    table: dict[str, str] = {}
    n_layers = int(model.cfg.n_layers)
    names = set(_hook_names(model))
    for kind, (suffix, *_rest) in _BLOCK_KINDS.items():
        for layer in range(n_layers):
            full = f"blocks.{layer}.{suffix}"
            if full in names:
                table[f"{kind}.{layer}"] = full
    for tl, ours in _TL_ALIASES.items():
        for layer in range(n_layers):
            if f"{ours}.{layer}" in table:
                table[f"{tl}.{layer}"] = table[f"{ours}.{layer}"]
    for kind, (full, *_rest) in _GLOBAL_KINDS.items():
        if full in names:
            table[kind] = full
    if "ln_final_normalized" in table:
        table.setdefault("normalized", table["ln_final_normalized"])
    return table


def site(model: Any, name: str | tuple[str, int] | Site) -> Site:
    """Resolve one site name (full hook name, ``kind.layer`` alias, or ``(kind, layer)``).

    Raises
    ------
    SiteError
        If the model has no such site; the message lists the closest valid names.
    """
    if isinstance(name, Site):
        name = name.name
    if isinstance(name, tuple):
        if len(name) != 2:
            raise SiteError(f"site tuple must be (kind, layer), got {name!r}")
        name = f"{name[0]}.{name[1]}"
    if not isinstance(name, str):
        raise SiteError(f"site name must be a string, got {type(name).__name__}")
    key = name.strip()
    names = _hook_names(model)
    dims = _dims(model)
    if key in model.hook_dict:
        return _make(model, key, dims)
    table = _alias_table(model)
    if key in table:
        return _make(model, table[key], dims)
    # "3.resid_post" or "resid_post3" forms
    m = re.match(r"^(\d+)\.(\w+)$", key) or None
    if m and f"{m.group(2)}.{m.group(1)}" in table:
        return _make(model, table[f"{m.group(2)}.{m.group(1)}"], dims)
    candidates = [n for n in names] + list(table)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
    if not close:
        close = [c for c in candidates if key.split(".")[-1] in c][:5]
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    raise SiteError(
        f"model has no site {name!r} ({int(model.cfg.n_layers)} layers).{hint} "
        "List them all with mechwork.sites(model) or `mechwork info MODEL`."
    )


def resolve(model: Any, names: str | Site | Sequence[str | Site]) -> list[Site]:
    """Resolve one or many site names, preserving order and dropping duplicates."""
    items: list[Any] = [names] if isinstance(names, (str, Site, tuple)) else list(names)
    out: list[Site] = []
    seen: set[str] = set()
    for n in items:
        s = site(model, n)
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    if not out:
        raise SiteError("no sites given")
    return out


def enable(model: Any, s: Site) -> None:
    """Switch on the config flag a gated site needs (``use_attn_result`` ...); no-op for ungated sites."""
    if s.gate is None:
        return
    if getattr(model.cfg, s.gate, False):
        return
    setter = getattr(model, _SETTERS[s.gate], None)
    if setter is None:
        raise SiteError(f"site {s.name} needs cfg.{s.gate}=True and the model has no {_SETTERS[s.gate]}()")
    setter(True)


def stop_at_layer(model: Any, site_list: Sequence[Site]) -> int | None:
    """The ``stop_at_layer`` that computes every site in ``site_list`` and nothing after (None = full pass)."""
    n_layers = int(model.cfg.n_layers)
    stops = [s.stop_layer(n_layers) for s in site_list]
    if any(x is None for x in stops):
        return None
    last = max(stops)  # type: ignore[type-var]
    return None if last >= n_layers else max(int(last), 1)
