"""The frozen :class:`Steerer` every steering method returns: per-site affine maps, hooks, artefact folder.

Every method in :mod:`mechwork.steering` reduces to one shape (METHODS 7): at site ``s``, at the chosen
positions, replace ``z`` by ``ω_s ⊙ z + b_s``, with a strength ``λ`` that interpolates to the identity:

    T^λ(z) = (1 + λ(ω − 1)) ⊙ z + λ b

Difference of means and ITI have ``ω = 1`` (additive vectors), Linear-AcT and LinEAS learn both, LoFiT keeps
biases on a few attention heads (``hook_z``). ``λ = 0`` is exactly the identity; ``λ = 1`` the fitted map.
"""

from __future__ import annotations

import contextlib
import html
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.artefact import load_artefact, save_artefact
from ..core.config import Config
from ..core.errors import CheckpointError, ConfigError, NonFiniteError, ShapeError
from ..core.io import PathLike
from ..core.sites import enable
from ..core.sites import site as resolve_site
from .positions import PositionState, check_positions, describe, position_mask, tracker_hook

FORMAT = "mechwork-steerer"
WEIGHTS = "steerer.safetensors"
TRACKER_SITE = "blocks.0.attn.hook_attn_scores"


@dataclass(frozen=True)
class SteererConfig(Config):
    """``cfg.json`` of a steerer: everything needed to reload and re-apply it (METHODS 7.10).

    ``sites`` are full hook names; ``shapes`` the per-token shape at each; ``positions`` the default rule
    (``all``, ``prompt``, ``generated`` or a list of absolute positions); ``strength`` the default strength and
    ``strength_range`` the documented range (affine maps: ``[0, 1]``; additive vectors: ``[-4, 4]``).
    """

    method: str
    sites: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    d_model: int
    model: str | None = None
    positions: Any = "all"
    strength: float = 1.0
    strength_range: tuple[float, float] = (0.0, 1.0)
    options: dict[str, Any] = field(default_factory=dict)
    concept: str | None = None
    target: str | None = None
    n_source: int = 0
    n_target: int = 0
    fit_seconds: float = 0.0
    format: str = FORMAT


def model_spec(model: Any) -> str | None:
    return getattr(model, "mechwork_spec", None) or getattr(model.cfg, "model_name", None)


def affine(z: Tensor, scale: Tensor | None, bias: Tensor | None, strength: float | Tensor) -> Tensor:
    """``(1 + λ(ω − 1)) ⊙ z + λ b`` with ``scale``/``bias`` broadcast over the leading axes."""
    out = z
    if scale is not None:
        out = out * (1 + strength * (scale - 1))
    if bias is not None:
        out = out + strength * bias
    return out


def site_hook(
    scale: Tensor | None, bias: Tensor | None, strength: float | Tensor, rule: Any, state: PositionState
) -> Any:
    """A forward hook applying one site's map at the positions of ``rule`` (also used while fitting)."""

    def fn(act: Tensor, hook: Any = None) -> Tensor:
        s = None if scale is None else scale.to(act.dtype)
        b = None if bias is None else bias.to(act.dtype)
        new = affine(act, s, b, strength)
        mask = position_mask(rule, state, act.shape[0], act.shape[1], act.device)
        if mask is None:
            return new
        return torch.where(mask.reshape(*mask.shape, *([1] * (act.ndim - 2))), new, act)

    return fn


@dataclass(eq=False)
class Steerer:
    """A fitted steering intervention: per-site scale ``ω`` and bias ``b`` (either may be absent).

    Attributes
    ----------
    scales, biases : dict of str to Tensor
        Per site (full hook name), tensors of the site's per-token shape (``[d_model]``, ``[n_heads, d_head]``).
    config : SteererConfig
    card : dict
        Fitting diagnostics (loss curve, chosen heads, timings); saved as ``card.json``.
    """

    scales: dict[str, Tensor]
    biases: dict[str, Tensor]
    config: SteererConfig
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, shape in zip(self.config.sites, self.config.shapes):
            for kind, d in (("scale", self.scales), ("bias", self.biases)):
                t = d.get(name)
                if t is not None and tuple(t.shape) != tuple(shape):
                    raise ShapeError(f"{kind} at {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
                if t is not None and not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(f"{kind} at {name} has NaN or inf values")
        extra = (set(self.scales) | set(self.biases)) - set(self.config.sites)
        if extra:
            raise ConfigError(f"tensors for sites {sorted(extra)} that the config does not list")

    # --- what it is --------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def sites(self) -> list[str]:
        return list(self.config.sites)

    @property
    def n_parameters(self) -> int:
        """Numbers the steerer stores (scales and biases; units left at the identity included)."""
        return sum(t.numel() for t in self.scales.values()) + sum(t.numel() for t in self.biases.values())

    def support(self, atol: float = 0.0) -> dict[str, int]:
        """Per site, the number of units whose map is not the identity (``ω ≠ 1`` or ``b ≠ 0``)."""
        out = {}
        for name, shape in zip(self.config.sites, self.config.shapes):
            active = torch.zeros(shape, dtype=torch.bool)
            if name in self.scales:
                active |= (self.scales[name].cpu() - 1).abs() > atol
            if name in self.biases:
                active |= self.biases[name].cpu().abs() > atol
            out[name] = int(active.sum())
        return out

    def norms(self) -> dict[str, dict[str, float]]:
        """Per site ``‖ω − 1‖₂`` and ``‖b‖₂`` (the group-lasso norms; a switched-off layer has both 0)."""
        out = {}
        for name in self.config.sites:
            s, b = self.scales.get(name), self.biases.get(name)
            out[name] = {
                "scale": float((s - 1).norm()) if s is not None else 0.0,
                "bias": float(b.norm()) if b is not None else 0.0,
            }
        return out

    def __repr__(self) -> str:
        sup = self.support()
        active = sum(v > 0 for v in sup.values())
        return (
            f"Steerer(method={self.method!r}, sites={len(self.sites)} ({active} active), "
            f"parameters={self.n_parameters}, positions={describe(self.config.positions)!r}, "
            f"strength={self.config.strength})"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{sup}</td><td>{nm['scale']:.3g}</td><td>{nm['bias']:.3g}</td></tr>"
            for (n, sup), nm in zip(self.support().items(), self.norms().values())
        )
        c = self.config
        return (
            f"<div><b>Steerer</b> {html.escape(c.method)} on {html.escape(str(c.model))} "
            f"(concept {html.escape(str(c.concept))} → {html.escape(str(c.target))}; {c.n_source}+{c.n_target} "
            f"prompts; {self.n_parameters} parameters; positions {html.escape(str(describe(c.positions)))})"
            "<table><tr><th>site</th><th>support</th><th>‖ω−1‖</th><th>‖b‖</th></tr>"
            f"{rows}</table></div>"
        )

    # --- maps ----------------------------------------------------------------------------------------------
    def check_strength(self, strength: float | None) -> float:
        s = self.config.strength if strength is None else strength
        lo, hi = self.config.strength_range
        if not isinstance(s, (int, float)) or s != s or not lo <= float(s) <= hi:
            raise ConfigError(
                f"strength {s!r} is outside the documented range [{lo}, {hi}] of a {self.method} steerer "
                f"({'affine maps interpolate to the identity at 0' if lo == 0 else 'multiplier of the vectors'})"
            )
        return float(s)

    def map(self, site: str, z: Tensor, *, strength: float | None = None) -> Tensor:
        """Apply one site's map to activations ``z`` (trailing axes = the site's per-token shape)."""
        return affine(z, self._t(self.scales, site, z), self._t(self.biases, site, z), self.check_strength(strength))

    def inverse_map(self, site: str, z: Tensor, *, strength: float | None = None) -> Tensor:
        """``T^λ⁻¹(z) = (z − λ b) / (1 + λ(ω − 1))`` (concept inclusion from a removal map, METHODS 7.4)."""
        lam = self.check_strength(strength)
        s, b = self._t(self.scales, site, z), self._t(self.biases, site, z)
        out = z if b is None else z - lam * b
        return out if s is None else out / (1 + lam * (s - 1))

    def inverse(self) -> Steerer:
        """The steerer whose map at strength 1 is this one's inverse: ``ω' = 1/ω``, ``b' = −b/ω``."""
        scales, biases = {}, {}
        for name in self.config.sites:
            s, b = self.scales.get(name), self.biases.get(name)
            if s is not None and bool((s.abs() < 1e-6).any()):
                raise ConfigError(f"the map at {name} has scales of (almost) 0 and cannot be inverted")
            if s is not None:
                scales[name] = 1 / s
            if b is not None:
                biases[name] = -b / s if s is not None else -b
        cfg = self.config.replace(method=self.config.method, options={**self.config.options, "inverse": True})
        return Steerer(scales, biases, cfg, {**self.card, "inverse_of": self.method})

    def select(self, sites: list[str]) -> Steerer:
        """The same steerer restricted to some of its sites (a layer sweep of a multi-site steerer)."""
        unknown = [s for s in sites if s not in self.config.sites]
        if unknown or not sites:
            raise ConfigError(f"sites {unknown or sites} are not a non-empty subset of this steerer's {self.sites}")
        keep = [i for i, s in enumerate(self.config.sites) if s in sites]
        cfg = self.config.replace(
            sites=tuple(self.config.sites[i] for i in keep), shapes=tuple(self.config.shapes[i] for i in keep)
        )
        pick = lambda d: {k: v for k, v in d.items() if k in sites}  # noqa: E731
        return Steerer(pick(self.scales), pick(self.biases), cfg, self.card)

    def _t(self, d: dict[str, Tensor], site: str, z: Tensor) -> Tensor | None:
        if site not in self.config.sites:
            raise ConfigError(f"{site!r} is not one of this steerer's sites {self.sites}")
        t = d.get(site)
        return None if t is None else t.to(device=z.device, dtype=z.dtype)

    # --- hooks ---------------------------------------------------------------------------------------------
    def hooks(
        self, model: Any, *, strength: float | None = None, positions: Any = None, state: PositionState | None = None
    ) -> list[tuple[str, Any]]:
        """``fwd_hooks`` for ``model.run_with_hooks`` / ``model.hooks``: the maps, plus the position tracker.

        Raises ``SiteError`` (with suggestions) for a site the model lacks and ``ShapeError`` for another width.
        """
        lam = self.check_strength(strength)
        rule = check_positions(self.config.positions if positions is None else positions)
        state = state if state is not None else PositionState()
        self.check_model(model)
        dev = next(model.parameters()).device
        out: list[tuple[str, Any]] = []
        if not (isinstance(rule, str) and rule == "all") and int(model.cfg.n_layers) > 0:
            out.append((TRACKER_SITE, tracker_hook(state)))
        for name in self.config.sites:
            s, b = self.scales.get(name), self.biases.get(name)
            s = None if s is None else s.to(dev)
            b = None if b is None else b.to(dev)
            out.append((name, site_hook(s, b, lam, rule, state)))
        return out

    @contextlib.contextmanager
    def apply(
        self, model: Any, *, strength: float | None = None, positions: Any = None, state: PositionState | None = None
    ) -> Iterator[Any]:
        """``with steerer.apply(model, strength=0.7): model.generate(...)`` — hooks removed on exit."""
        with model.hooks(fwd_hooks=self.hooks(model, strength=strength, positions=positions, state=state)):
            yield model

    def check_model(self, model: Any) -> None:
        """Refuse a model of another width or without the steerer's sites (names the site and both shapes)."""
        d_model = int(model.cfg.d_model)
        if d_model != self.config.d_model:
            raise ShapeError(
                f"this {self.method} steerer was fitted on a model with d_model={self.config.d_model} "
                f"({self.config.model}); the model given has d_model={d_model}"
            )
        spec = model_spec(model)
        if self.config.model and spec and str(spec) != str(self.config.model):
            warnings.warn(
                f"steerer fitted on {self.config.model!r} applied to {spec!r} (same width: allowed)", stacklevel=3
            )
        for name, shape in zip(self.config.sites, self.config.shapes):
            s = resolve_site(model, name)
            if s.shape is None or tuple(s.shape) != tuple(shape):
                raise ShapeError(f"site {name} has per-token shape {s.shape} in this model; the steerer has {shape}")
            enable(model, s)

    # --- artefact ------------------------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write ``cfg.json``, ``steerer.safetensors`` and ``card.json`` into the folder ``path`` atomically."""
        tensors = {f"scale.{k}": v for k, v in self.scales.items()}
        tensors.update({f"bias.{k}": v for k, v in self.biases.items()})
        meta = {"format": FORMAT, "method": self.method}
        return save_artefact(path, self.config, tensors, weights=WEIGHTS, metadata=meta, card=self.card)

    @classmethod
    def load(cls, path: PathLike, *, device: str | torch.device = "cpu") -> Steerer:
        """Load a folder written by :meth:`save`; a bad file raises ``CheckpointError`` naming it and the field."""
        path = Path(path)
        cfg, t, card = load_artefact(path, SteererConfig, format=FORMAT, weights=WEIGHTS, what="steerer", device=device)
        cfg = cfg.replace(shapes=tuple(tuple(s) for s in cfg.shapes))
        if len(cfg.shapes) != len(cfg.sites):
            raise CheckpointError(f"{path / 'cfg.json'}: {len(cfg.sites)} sites but {len(cfg.shapes)} shapes")
        scales = {k.removeprefix("scale."): v for k, v in t.items() if k.startswith("scale.")}
        biases = {k.removeprefix("bias."): v for k, v in t.items() if k.startswith("bias.")}
        try:
            return cls(scales, biases, cfg, card)
        except (ShapeError, ConfigError, NonFiniteError) as e:
            raise CheckpointError(f"{path / WEIGHTS} does not match {path / 'cfg.json'}: {e}") from e


def load(path: PathLike, *, device: str | torch.device = "cpu") -> Steerer:
    """Load a steerer folder (see :meth:`Steerer.load`)."""
    return Steerer.load(path, device=device)
