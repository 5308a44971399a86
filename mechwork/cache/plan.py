"""Planning a collection: sites and their per-token shapes, shard size, the forward pass that captures them."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.devices import parse_dtype
from ..core.errors import ConfigError, ShapeError, SiteError
from ..core.hooks import capture, model_device
from ..core.sites import Site, enable, resolve, stop_at_layer
from ..core.sites import sites as all_sites
from . import format as F
from .writer import Stream

SHARD_BYTES = 256 << 20  # default target size of the largest shard file of a store
_UNSUPPORTED = {"attn_scores": "masked positions hold -inf; cache hook_pattern instead"}


@dataclass(frozen=True)
class Plan:
    """What one collection stores: the resolved sites, their manifest entries, the row streams written (sites,
    then the token stream) and the ``stop_at_layer`` of the forward pass."""

    sites: list[Site]
    entries: tuple[F.SiteEntry, ...]
    streams: list[Stream]
    stop: int | None


def check_int(name: str, v: Any, *, lo: int = 1, none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``v`` is an int ``>= lo`` (or ``None`` when allowed); bools are refused."""
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}{' or None' if none else ''}, got {v!r}")


def dirname(site: Site) -> str:
    """The folder of a site's shards inside a store."""
    return site.name.replace("/", "_")


def row_shape(site: Site, context: int) -> tuple[int, ...] | None:
    """Per-token shape of a site for windows of ``context`` tokens (``None`` when the site's shape is unknown)."""
    if site.shape is None:
        return None
    return tuple(context if s == "pos" else int(s) for s in site.shape)


def rows_of(t: Tensor, site: Site, context: int) -> Tensor:
    """``[batch, pos, *shape]`` rows of one hooked tensor (attention patterns: one row per query position)."""
    if site.layout.startswith("batch head"):  # [batch, head, q, k] -> [batch, q, head, k], k padded to context
        t = t.transpose(1, 2)
        if t.shape[-1] < context:
            t = torch.nn.functional.pad(t, (0, context - t.shape[-1]))
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def expand_patterns(model: Any, sites: Any) -> Any:
    """Expand shell-style patterns (``"resid_post.*"``, ``"blocks.*.attn.hook_z"``) into the matching sites, in
    forward order; other names pass through unchanged (and are validated by :func:`resolve`)."""
    names = [sites] if isinstance(sites, (str, Site, tuple)) else list(sites)
    out: list[Any] = []
    for n in names:
        if not (isinstance(n, str) and any(c in n for c in "*?[")):
            out.append(n)
            continue
        hits = [s.name for s in all_sites(model) if fnmatch.fnmatchcase(s.name, n) or fnmatch.fnmatchcase(s.alias, n)]
        if not hits:
            raise SiteError(f"the pattern {n!r} matches no site of the model; list them with mechwork.sites(model)")
        out.extend(hits)
    return out


def make_plan(model: Any, sites: Any, context: int, dtype: torch.dtype) -> Plan:
    """Resolve and validate ``sites`` (switching on gated hooks), and find every site's per-token shape."""
    site_list = resolve(model, expand_patterns(model, sites))
    for s in site_list:
        if s.kind in _UNSUPPORTED:
            raise ConfigError(f"site {s.name} cannot be cached: {_UNSUPPORTED[s.kind]}")
        enable(model, s)
    shapes = {s.name: row_shape(s, context) for s in site_list}
    unknown = [s for s in site_list if shapes[s.name] is None]
    if unknown:  # backend-specific hook points: learn their shapes from one short forward pass
        probe = capture(model, torch.zeros((1, min(context, 2)), dtype=torch.long, device=model_device(model)), unknown)
        for s in unknown:
            t = probe[s.name]
            if t.ndim < 2 or t.shape[0] != 1 or t.shape[1] != min(context, 2):
                raise ShapeError(
                    f"site {s.name} gives tensors of shape {tuple(t.shape)}, not [batch, pos, ...]; it cannot be cached per token"
                )
            shapes[s.name] = tuple(t.shape[2:])
    entries = tuple(F.SiteEntry(s.name, s.alias, s.kind, s.layer, shapes[s.name], dirname(s)) for s in site_list)  # type: ignore[arg-type]
    streams = [Stream(e.name, e.dir, dtype, tuple(e.shape)) for e in entries] + [
        Stream(F.TOKENS, F.TOKENS, torch.int64, (3,))
    ]
    return Plan(site_list, entries, streams, stop_at_layer(model, site_list))


FINGERPRINT_SAMPLE = 4096  # values per parameter entering the weight fingerprint


def fingerprint(model: Any) -> str:
    """Parameter count and a float64 checksum of an evenly strided sample of every parameter.

    It only has to tell models apart (to refuse resuming a store with another model), so it reads at most
    ``FINGERPRINT_SAMPLE`` values per parameter: hashing every weight of a GPT-2-sized model costs seconds.
    """
    n = 0
    total = 0.0
    with torch.inference_mode():
        for i, p in enumerate(model.parameters()):
            flat = p.detach().reshape(-1)
            n += flat.numel()
            sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLE)].double()
            weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device) % 97 + i + 1
            total += float((sample.abs() + sample * weights).sum())
    return f"{n}:{total:.12g}"


def shard_tokens_for(
    streams: list[Stream], context: int, batch_size: int, requested: int | None, n_tokens: int | None, align: int
) -> int:
    """Rows per shard: whole batches of whole windows, page-aligned in every stream, about SHARD_BYTES large."""
    grain = math.lcm(batch_size * context, F.align_rows([s.row_bytes for s in streams], align))
    if requested is None:
        requested = max(SHARD_BYTES // max(s.row_bytes for s in streams), 1)
        if n_tokens is not None:
            requested = min(requested, n_tokens)
    return max(1, -(-requested // grain)) * grain


def autocast_dtype(autocast: Any) -> torch.dtype | None:
    if autocast in (None, False):
        return None
    if autocast is True:
        return torch.bfloat16
    dt = parse_dtype(autocast)
    if dt not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"autocast must be True, 'bfloat16' or 'float16', got {autocast!r}")
    return dt
