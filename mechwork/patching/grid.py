"""The grid of a patching experiment: which sites, at which granularity, and the cells that get one score each.

Every site is handled in one *canonical* layout ``[batch, pos, head, feature]`` (``head`` has length 1 for
residual-stream-like sites, and for attention patterns ``pos`` is the query/destination position and
``feature`` the key position). A cell is a (site, position or all, head or all) selection; the four
granularities pick which of the two axes are split:

=================  ====================  ============================================
``per``            axes after ``layer``  cell
=================  ====================  ============================================
``"layer"``        ()                    the whole site (every position and head)
``"position"``     (pos,)                one position, every head
``"head"``         (head,)               one head, every position
``"head_position"`` (pos, head)          one head at one position
=================  ====================  ============================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, DataError, SiteError
from ..core.sites import Site, enable
from ..core.sites import site as resolve_site

PER = ("layer", "position", "head", "head_position")
_PER_ALIASES = {
    "pos": "position",
    "positions": "position",
    "layers": "layer",
    "heads": "head",
    "head_pos": "head_position",
    "pos_head": "head_position",
    "head_by_pos": "head_position",
}
_PER_AXES = {"layer": (), "position": ("pos",), "head": ("head",), "head_position": ("pos", "head")}
# kind groups accepted in ``sites=``
GROUPS: dict[str, tuple[str, ...]] = {
    "block": ("resid_pre", "attn_out", "mlp_out"),
    "resid": ("resid_pre", "resid_mid", "resid_post"),
    "heads": ("z",),
    "head": ("z",),
    "attn_head_out": ("z",),
}
_LAYOUTS = (
    "batch pos d_model",
    "batch pos d_mlp",
    "batch pos 1",
    "batch pos head d_head",
    "batch pos head d_model",
    "batch head q_pos k_pos",
)


def normalize_per(per: str) -> str:
    """Canonical granularity name (``"pos"`` -> ``"position"``, ...)."""
    p = _PER_ALIASES.get(str(per), str(per))
    if p not in PER:
        raise ConfigError(f"per must be one of {', '.join(PER)}, got {per!r}")
    return p


def has_head_axis(s: Site) -> bool:
    return has_head_axis_layout(s.layout)


def to_canonical(t: Tensor, layout: str) -> Tensor:
    """``[batch, pos, head, feature]`` view of an activation in hook layout ``layout``."""
    if layout.startswith("batch head"):
        return t.transpose(1, 2)
    if has_head_axis_layout(layout):
        return t
    return t.unsqueeze(2)


def mask_to_layout(mask: Tensor, layout: str) -> Tensor:
    """A canonical ``[rows, pos, head]`` mask broadcastable against the hook-layout activation."""
    if layout.startswith("batch head"):
        return mask.transpose(1, 2).unsqueeze(-1)
    if has_head_axis_layout(layout):
        return mask.unsqueeze(-1)
    return mask[:, :, :1]


def has_head_axis_layout(layout: str) -> bool:
    return "head" in layout.split()


def pos_axis(layout: str) -> int:
    """Axis of the (query) position in the hook layout."""
    return 2 if layout.startswith("batch head") else 1


@dataclass(frozen=True)
class Node:
    """One cell of a patching grid, usable as a circuit node.

    Attributes
    ----------
    site : str
        Full hook name (``"blocks.1.attn.hook_z"``).
    head, pos : int or None
        The head / position the cell selects (None: all of them).
    score : float
        The score the node had in the result it came from (not part of its identity).
    alias : str
        Short site name ``kind.layer`` (``"z.1"``), for display.
    """

    site: str
    head: int | None = None
    pos: int | None = None
    score: float = field(default=float("nan"), compare=False)
    alias: str = field(default="", compare=False)

    @classmethod
    def of(cls, s: Site, head: int | None = None, pos: int | None = None, score: float = float("nan")) -> Node:
        return cls(s.name, head, pos, score, s.alias)

    @property
    def layer(self) -> int:
        m = re.match(r"^blocks\.(\d+)\.", self.site)
        return int(m.group(1)) if m else -1

    @property
    def kind(self) -> str:
        return self.alias.rsplit(".", 1)[0] if self.alias else self.site

    def __str__(self) -> str:
        out = self.alias or self.site
        if self.head is not None:
            out += f" head {self.head}"
        if self.pos is not None:
            out += f" pos {self.pos}"
        return out

    def __repr__(self) -> str:
        sc = "" if self.score != self.score else f", score={self.score:.4g}"
        return f"Node({str(self)!r}{sc})"

    @classmethod
    def parse(cls, model: Any, spec: str | Node | tuple) -> Node:
        """A node from ``Node``, ``"L1H3"``, ``"z.1 head 3"``, ``"resid_pre.2 pos 5"``, ``("z.1", 3)`` or
        ``("z.1", 3, 5)`` (site, head, pos); the site is validated against ``model``."""
        if isinstance(spec, Node):
            return cls.of(resolve_site(model, spec.site), spec.head, spec.pos, spec.score)
        if isinstance(spec, tuple):
            if not 1 <= len(spec) <= 3:
                raise SiteError(f"a node tuple is (site, head[, pos]), got {spec!r}")
            name, head, pos = (list(spec) + [None, None])[:3]
            return cls.of(resolve_site(model, name), _opt_int(head), _opt_int(pos))
        if not isinstance(spec, str):
            raise SiteError(f"cannot read a node from {type(spec).__name__}: {spec!r}")
        m = re.fullmatch(r"\s*L(\d+)\s*H(\d+)\s*", spec, flags=re.I)
        if m:
            return cls.of(resolve_site(model, f"z.{m.group(1)}"), int(m.group(2)))
        m = re.fullmatch(r"\s*(\S+)(?:\s+head\s+(\d+))?(?:\s+pos\s+(\d+))?\s*", spec)
        if not m:
            raise SiteError(f"cannot read a node from {spec!r}; use 'L1H3', 'z.1 head 3' or 'resid_pre.2 pos 5'")
        return cls.of(resolve_site(model, m.group(1)), _opt_int(m.group(2)), _opt_int(m.group(3)))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass
class Grid:
    """Sites x granularity of one experiment, with the cells' canonical masks and the result's axes.

    Attributes
    ----------
    sites : list of Site
        Patched sites, grouped by kind (in the order given) then by layer.
    per : str
        Granularity (see module docstring).
    n_pos : int
        Sequence length of the batch.
    axes : tuple of str
        Axis names of the scores tensor: optional ``"component"``, ``"layer"``, then the granularity's axes.
    labels : dict
        Axis name -> list of labels (component kinds, layer ints, position strings, head ints).
    """

    sites: list[Site]
    per: str
    n_pos: int
    axes: tuple[str, ...] = ()
    labels: dict[str, list] = field(default_factory=dict)
    _site_index: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (component idx, layer idx)
    _n_heads: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.labels[a]) for a in self.axes)

    @property
    def kinds(self) -> list[str]:
        return self.labels.get("component", [self.sites[0].kind])

    def site_heads(self, s: Site) -> int:
        return self._n_heads[s.name]

    def cells(self, s: Site) -> list[tuple[int | None, int | None]]:
        """The (pos, head) selections of site ``s`` in grid order (None: all)."""
        P, H = self.n_pos, self.site_heads(s)
        if self.per == "layer":
            return [(None, None)]
        if self.per == "position":
            return [(p, None) for p in range(P)]
        if self.per == "head":
            return [(None, h) for h in range(H)]
        return [(p, h) for p in range(P) for h in range(H)]

    def masks(self, s: Site) -> Tensor:
        """Canonical ``[n_cells, pos, head]`` boolean masks of the cells of site ``s``."""
        cells = self.cells(s)
        P, H = self.n_pos, self.site_heads(s)
        out = torch.zeros(len(cells), P, H, dtype=torch.bool)
        for i, (p, h) in enumerate(cells):
            out[i, slice(None) if p is None else p, slice(None) if h is None else h] = True
        return out

    def index(self, s: Site) -> tuple[Any, ...]:
        """Index into the scores tensor selecting the block of site ``s`` (its cells in :meth:`cells` order)."""
        ci, li = self._site_index[s.name]
        lead: tuple[Any, ...] = (ci, li) if "component" in self.axes else (li,)
        H = self.site_heads(s)
        tail = {
            "layer": (),
            "position": (slice(None),),
            "head": (slice(0, H),),
            "head_position": (slice(None), slice(0, H)),
        }
        return lead + tail[self.per]

    def reduce(self, canon: Tensor, s: Site) -> Tensor:
        """Sum a canonical ``[batch, pos, head, feature]`` product over each cell: ``[batch, *cell axes]``."""
        x = canon.sum(-1)
        if self.per == "layer":
            return x.sum((1, 2))
        if self.per == "position":
            return x.sum(2)
        if self.per == "head":
            return x.sum(1)
        return x

    def empty(self, n: int | None = None) -> Tensor:
        """A NaN-filled scores tensor (with a leading prompt axis of length ``n`` when given)."""
        shape = ((n,) if n is not None else ()) + self.shape
        return torch.full(shape, float("nan"), dtype=torch.float32)

    def node(self, s: Site, p: int | None, h: int | None, score: float = float("nan")) -> Node:
        return Node.of(s, h, p, score)


def expand_sites(model: Any, sites: str | Site | Sequence[str | Site] | None, per: str) -> list[Site]:
    """Resolve ``sites=`` (kind names, groups, aliases, full hook names) into block sites, validated.

    A kind (``"resid_pre"``, ``"z"``, ``"mlp_out"``) or group (``"block"``, ``"heads"``) expands to every
    layer that has it; ``"resid_pre.2"`` or a full hook name selects one site.
    """
    if getattr(model, "hook_dict", None) is None or getattr(model, "cfg", None) is None:
        raise SiteError(
            f"{type(model).__name__} has no hook points (hook_dict) and no cfg; load it with mechwork.load_model"
        )
    if sites is None:
        sites = "z" if per in ("head", "head_position") else "resid_pre"
    items = [sites] if isinstance(sites, (str, Site)) else list(sites)
    if not items:
        raise SiteError("sites is empty; give a kind such as 'resid_pre' or 'z', or site names")
    n_layers = int(model.cfg.n_layers)
    out: list[Site] = []
    for item in items:
        if isinstance(item, Site):
            item = item.name
        if not isinstance(item, str):
            raise SiteError(f"sites must be names, got {type(item).__name__}: {item!r}")
        kinds = GROUPS.get(item, (item,))
        found: list[Site] = []
        for kind in kinds:
            if "." in kind or kind.startswith("blocks"):
                found.append(resolve_site(model, kind))
                continue
            layered = [_try_site(model, f"{kind}.{layer}") for layer in range(n_layers)]
            layered = [s for s in layered if s is not None]
            if not layered:
                found.append(resolve_site(model, kind))  # a global site, or a SiteError with suggestions
            found += layered
        out += found
    uniq: list[Site] = []
    for s in out:
        if s.name not in {u.name for u in uniq}:
            uniq.append(s)
    for s in uniq:
        check_site(s, per)
        enable(model, s)
    return uniq


def _try_site(model: Any, name: str) -> Site | None:
    try:
        return resolve_site(model, name)
    except SiteError:
        return None


def check_site(s: Site, per: str) -> None:
    """Raise :class:`SiteError` when ``s`` cannot be patched at granularity ``per``."""
    if s.layer is None:
        raise SiteError(
            f"{s.name} is outside the blocks; patching works on block sites (for the embeddings use resid_pre.0)"
        )
    if s.layout not in _LAYOUTS or s.shape is None:
        raise SiteError(f"{s.name} ({s.kind}) has no [batch, pos, ...] layout that patching can split into cells")
    if per in ("head", "head_position") and not has_head_axis(s):
        raise SiteError(
            f"per={per!r} needs a site with a head axis (z, q, k, v, pattern, attn_scores, result, q_input, ...); "
            f"{s.alias} ({s.layout}) has none: use per='position' or per='layer'"
        )


def build_grid(model: Any, sites: list[Site], per: str, n_pos: int, pos_labels: list[str]) -> Grid:
    """The grid of ``sites`` at granularity ``per`` for a batch of ``n_pos`` positions."""
    kinds: list[str] = []
    for s in sites:
        if s.kind not in kinds:
            kinds.append(s.kind)
    layers = sorted({int(s.layer) for s in sites})  # type: ignore[arg-type]
    heads = {s.name: _n_heads(model, s) for s in sites}
    labels: dict[str, list] = {}
    axes: tuple[str, ...] = ()
    if len(kinds) > 1:
        axes += ("component",)
        labels["component"] = kinds
    axes += ("layer",)
    labels["layer"] = layers
    for a in _PER_AXES[per]:
        axes += (a,)
        labels[a] = list(pos_labels) if a == "pos" else list(range(max(heads.values())))
    if len(pos_labels) != n_pos:
        raise DataError(f"{len(pos_labels)} position labels for {n_pos} positions")
    index = {s.name: (kinds.index(s.kind), layers.index(int(s.layer))) for s in sites}  # type: ignore[arg-type]
    return Grid(sites, per, n_pos, axes, labels, index, heads)


def _n_heads(model: Any, s: Site) -> int:
    if not has_head_axis(s):
        return 1
    return int(s.shape[0])  # type: ignore[index]
