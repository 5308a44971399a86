"""``PatchResult``: the scores of one patching / attribution method over a grid, with named axes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.config import Config
from ..core.errors import CheckpointError, ConfigError, ShapeError
from ..core.files import check_sealed, seal_json
from ..core.io import atomic_write_json, read_json
from .grid import Node

FORMAT = "mechwork-patch-result"
METHOD_NAMES = {
    "activation": "activation patching",
    "attribution": "attribution patching (AtP)",
    "relevance": "relevance patching (RelP)",
    "integrated_gradients": "integrated gradients",
}


@dataclass
class PatchResult:
    """Scores of one method over a grid of cells.

    Attributes
    ----------
    scores : Float[Tensor, "..."]
        Mean over prompts of the (estimated) metric change from patching each cell, axes ``axes``. Cells
        that do not exist (a head index beyond a site's heads, a layer a component lacks) are NaN.
    axes : tuple of str
        Axis names: optional ``"component"``, ``"layer"``, then ``"pos"`` and/or ``"head"``.
    labels : dict
        Axis -> labels (``component``: kinds, ``layer``: ints, ``pos``: ``"i token"``, ``head``: ints).
    method : str
        ``activation``, ``attribution``, ``relevance`` or ``integrated_gradients``.
    per : str
        Granularity (``layer``, ``position``, ``head``, ``head_position``).
    direction : str
        ``denoise`` (clean patched into the corrupted run) or ``noise`` (corrupted into clean).
    sites, aliases : list of str
        Full hook names of the patched sites and their short names (``"z.1"``).
    clean, corrupted : float
        Mean metric on the clean and corrupted runs.
    per_prompt : Float[Tensor, "batch ..."] or None
        Scores per prompt (``scores`` is their mean).
    cost : dict
        ``forwards``, ``backwards``, ``rows``, ``full_forward_equivalents``, ``seconds``.
    info : dict
        Method settings (rules, steps, quadrature, completeness) and provenance (model, task, backend).
    """

    scores: Tensor
    axes: tuple[str, ...]
    labels: dict[str, list]
    method: str
    per: str
    direction: str
    sites: list[str]
    aliases: list[str]
    clean: float
    corrupted: float
    per_prompt: Tensor | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(len(self.labels[a]) for a in self.axes)
        if len(self.sites) != len(self.aliases):
            raise ShapeError(f"{len(self.sites)} sites but {len(self.aliases)} aliases")
        if tuple(self.scores.shape) != shape:
            raise ShapeError(f"scores shape {tuple(self.scores.shape)} does not match axes {self.axes} {shape}")

    # --- views ------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.scores.shape)

    @property
    def baseline(self) -> float:
        """Mean metric of the run that was patched (corrupted when denoising, clean when noising)."""
        return self.corrupted if self.direction == "denoise" else self.clean

    @property
    def gap(self) -> float:
        """Source minus base metric: the change that patching *everything* would make."""
        return (self.clean - self.corrupted) if self.direction == "denoise" else (self.corrupted - self.clean)

    def normalized(self) -> Float[Tensor, ...]:
        """Scores divided by :attr:`gap`: 1 = the cell alone accounts for the whole clean/corrupted difference."""
        if self.gap == 0:
            return torch.full_like(self.scores, float("nan"))
        return self.scores / self.gap

    def patched(self) -> Float[Tensor, ...]:
        """The (estimated) mean metric after patching each cell: baseline + score."""
        return self.scores + self.baseline

    def sem(self) -> Float[Tensor, ...]:
        """Standard error of the mean over prompts (NaN without per-prompt scores or with one prompt)."""
        if self.per_prompt is None or self.per_prompt.shape[0] < 2:
            return torch.full_like(self.scores, float("nan"))
        return self.per_prompt.std(0) / math.sqrt(self.per_prompt.shape[0])

    def _coords(self, flat: int) -> dict[str, Any]:
        idx = torch.unravel_index(torch.tensor(flat), self.shape)
        return {a: int(i) for a, i in zip(self.axes, idx)}

    def node_at(self, coords: dict[str, int]) -> Node:
        """The :class:`Node` of the cell at integer ``coords`` (axis -> index)."""
        kind = (
            self.labels["component"][coords["component"]]
            if "component" in coords
            else self.aliases[0].rsplit(".", 1)[0]
        )
        layer = self.labels["layer"][coords["layer"]]
        key = f"{kind}.{layer}"
        if key not in self.aliases:
            raise ShapeError(f"no site {key} in this result")
        site = self.sites[self.aliases.index(key)]
        head = self.labels["head"][coords["head"]] if "head" in coords else None
        score = float(self.scores[tuple(coords[a] for a in self.axes)])
        return Node(site, head, coords.get("pos"), score, key)

    def top(self, n: int = 10, *, absolute: bool = True) -> list[Node]:
        """The ``n`` cells with the largest scores (by absolute value unless ``absolute=False``)."""
        flat = self.scores.flatten()
        key = flat.abs() if absolute else flat
        key = torch.where(torch.isnan(key), torch.full_like(key, -float("inf")), key)
        k = min(int(n), int((~torch.isnan(flat)).sum()))
        return [self.node_at(self._coords(int(i))) for i in key.topk(k).indices]

    def nodes(self) -> list[Node]:
        """Every existing cell as a :class:`Node` (with its score), in grid order."""
        flat = self.scores.flatten()
        return [self.node_at(self._coords(i)) for i in range(flat.numel()) if not math.isnan(float(flat[i]))]

    def to_dataframe(self) -> Any:
        """One row per cell: axis labels, site, node, score, normalised score and standard error."""
        import pandas as pd

        flat, norm, sem = self.scores.flatten(), self.normalized().flatten(), self.sem().flatten()
        rows = []
        for i in range(flat.numel()):
            if math.isnan(float(flat[i])):
                continue
            c = self._coords(i)
            node = self.node_at(c)
            row: dict[str, Any] = {a: self.labels[a][c[a]] for a in self.axes}
            row.update(
                site=node.site, node=str(node), score=float(flat[i]), normalized=float(norm[i]), sem=float(sem[i])
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def correlation(self, other: PatchResult, *, normalized: bool = False) -> float:
        """Pearson correlation of the scores with ``other``'s over the cells both have (same grid)."""
        if self.shape != other.shape or self.axes != other.axes:
            raise ShapeError(f"results have different grids: {self.axes} {self.shape} vs {other.axes} {other.shape}")
        a = (self.normalized() if normalized else self.scores).flatten().double()
        b = (other.normalized() if normalized else other.scores).flatten().double()
        ok = ~(torch.isnan(a) | torch.isnan(b))
        a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
        den = float(a.norm() * b.norm())
        return float("nan") if den == 0 else float((a * b).sum()) / den

    def plot(self, *, normalized: bool = True, title: str | None = None, **kwargs: Any) -> Any:
        """A plotly heatmap (layer x position, layer x head, or (layer, head) x position)."""
        from .plot import plot_result

        return plot_result(self, normalized=normalized, title=title, **kwargs)

    def __repr__(self) -> str:
        dims = " x ".join(f"{a}={len(self.labels[a])}" for a in self.axes)
        return (
            f"PatchResult({METHOD_NAMES.get(self.method, self.method)}, per={self.per}, {self.direction}, {dims}, "
            f"clean={self.clean:.4g}, corrupted={self.corrupted:.4g})"
        )

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        facts = {
            "method": METHOD_NAMES.get(self.method, self.method),
            "per": self.per,
            "direction": self.direction,
            "grid": " x ".join(f"{a} {len(self.labels[a])}" for a in self.axes),
            "clean metric": self.clean,
            "corrupted metric": self.corrupted,
            "prompts": self.info.get("n_prompts"),
            "task": self.info.get("task"),
            "model": self.info.get("model"),
        }
        try:
            top = [(_cell(n), n.score, n.score / self.gap if self.gap else float("nan")) for n in self.top(5)]
        except Exception:  # noqa: BLE001 - display must not fail
            top = []
        return card("PatchResult", facts, table=(("top cell", "score", "of gap"), top) if top else None)

    # --- files ------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "per": self.per,
            "direction": self.direction,
            "axes": list(self.axes),
            "labels": self.labels,
            "sites": self.sites,
            "aliases": self.aliases,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "scores": _nan_to_none(self.scores.tolist()),
            "per_prompt": None if self.per_prompt is None else _nan_to_none(self.per_prompt.tolist()),
            "cost": self.cost,
            "info": _jsonable(self.info),
        }

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically)."""
        path = Path(path)
        atomic_write_json(path, seal_json(self.to_json()))
        return path

    @classmethod
    def from_json(cls, d: dict[str, Any], *, source: str = "<dict>") -> PatchResult:
        """Rebuild a result from its JSON form, validated (:class:`ResultFile`: types, shapes, finite numbers)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not a mechwork patch result (format {d.get('format') if isinstance(d, dict) else None!r})"
            )
        check_sealed(d, source, what="patch result")
        try:
            f = ResultFile.from_dict(d, ignore=("sha256", "mechwork_version"), source=source)
        except ConfigError as e:
            raise CheckpointError(f"malformed patch result: {e}") from e
        try:
            scores = _tensor(f.scores)
            pp = None if f.per_prompt is None else _tensor(f.per_prompt)
            if torch.isinf(scores).any() or (pp is not None and torch.isinf(pp).any()):
                raise ValueError("scores contain inf")
            if not (math.isfinite(f.clean) and math.isfinite(f.corrupted)):
                raise ValueError("clean/corrupted metrics must be finite")
            if pp is not None and tuple(pp.shape[1:]) != tuple(scores.shape):
                raise ValueError(f"per_prompt shape {tuple(pp.shape)} does not match scores {tuple(scores.shape)}")
            missing = [a for a in f.axes if a not in f.labels]
            if missing:
                raise ValueError(f"axes {missing} have no labels")
            return cls(
                scores=scores,
                axes=f.axes,
                labels={k: list(v) for k, v in f.labels.items()},
                method=f.method,
                per=f.per,
                direction=f.direction,
                sites=list(f.sites),
                aliases=list(f.aliases),
                clean=f.clean,
                corrupted=f.corrupted,
                per_prompt=pp,
                cost=f.cost,
                info=f.info,
            )
        except (KeyError, TypeError, ValueError, ShapeError) as e:
            raise CheckpointError(f"{source}: malformed patch result ({type(e).__name__}: {e})") from e

    @classmethod
    def load(cls, path: str | Path) -> PatchResult:
        return cls.from_json(read_json(path, what="patch result"), source=str(path))


@dataclass(frozen=True)
class ResultFile(Config):
    """The JSON layout of a saved :class:`PatchResult` (declared once; checked field by field at load)."""

    format: str
    method: str
    per: str
    direction: str
    axes: tuple[Literal["component", "layer", "pos", "head"], ...]
    labels: dict[str, list[int | str]]
    sites: tuple[str, ...]
    aliases: tuple[str, ...]
    clean: float
    corrupted: float
    scores: Any
    per_prompt: Any = None
    cost: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _cell(n: Node) -> str:
    parts = (
        [n.alias or n.site]
        + ([f"head {n.head}"] if n.head is not None else [])
        + ([f"pos {n.pos}"] if n.pos is not None else [])
    )
    return " ".join(parts)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _tensor(x: Any) -> Tensor:
    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(u) for u in v]
        if v is None:
            return float("nan")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"scores must be numbers or null, found {v!r}")
        return v

    return torch.tensor(fix(x), dtype=torch.float32)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _nan_to_none(x.tolist())
    if isinstance(x, float) and math.isnan(x):
        return None
    return x
