"""The frozen :class:`Eraser` every method returns, its artefact folder and its hooks.

An eraser is the affine map ``r(x) = x - L R (x - b)`` with ``L`` ``[d, r]``, ``R`` ``[r, d]`` and ``b`` the
fitting mean (or none). LEACE gives an oblique projection (``R ≠ Lᵀ``); INLP, R-LACE and ``orth`` give an
orthogonal one (``R = Lᵀ``, ``L`` orthonormal). Stored as ``O(d r)`` numbers, applied in ``O(d r)`` per vector.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.artefact import load_artefact, save_artefact
from ..core.config import Config
from ..core.errors import CheckpointError, ShapeError
from ..core.io import PathLike
from ..core.sites import Site, enable
from ..core.sites import site as resolve_site

FORMAT = "mechwork-eraser"
WEIGHTS = "eraser.safetensors"


@dataclass(frozen=True)
class EraserConfig(Config):
    """What an eraser is and where it came from (``cfg.json`` of the artefact).

    ``method`` is ``leace``, ``orth``, ``inlp`` or ``rlace``; ``options`` the fitting method's settings;
    ``classes`` the concept's class values (empty for a continuous concept); ``model``/``site``/``task``/
    ``positions`` say where the activations came from when it was fitted from a model.
    """

    method: str
    d_in: int
    rank: int
    affine: bool
    options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[Any, ...] = ()
    n_samples: int = 0
    fit_seconds: float = 0.0
    model: str | None = None
    site: str | None = None
    task: str | None = None
    positions: str | None = None
    format: str = FORMAT


@dataclass(frozen=True, eq=False)
class Eraser:
    """A fitted concept eraser ``r(x) = x - proj_left @ proj_right @ (x - bias)``.

    Attributes
    ----------
    proj_left : Float[Tensor, "d r"]
    proj_right : Float[Tensor, "r d"]
    bias : Float[Tensor, "d"] or None
        The fitting mean (``affine=True``: the unconditional mean is kept), or ``None`` (a linear map).
    config : EraserConfig
    extras : dict of Tensor
        Method-specific tensors kept with the artefact (INLP: every classifier's weights; R-LACE: the relaxed
        solution's eigenvalues).
    card : dict
        Fitting diagnostics (per-iteration accuracies, losses, timings); saved as ``card.json``.
    """

    proj_left: Float[Tensor, "d r"]
    proj_right: Float[Tensor, "r d"]
    bias: Float[Tensor, " d"] | None
    config: EraserConfig
    extras: dict[str, Tensor] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, r = self.proj_left.shape
        if tuple(self.proj_right.shape) != (r, d):
            raise ShapeError(f"proj_right has shape {tuple(self.proj_right.shape)}, expected ({r}, {d})")
        if self.bias is not None and tuple(self.bias.shape) != (d,):
            raise ShapeError(f"bias has shape {tuple(self.bias.shape)}, expected ({d},)")

    # --- what it is -------------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        """Width of the vectors it applies to."""
        return int(self.proj_left.shape[0])

    @property
    def rank(self) -> int:
        """Number of dimensions removed: the rank of ``x ↦ x - r(x)``."""
        return int(self.proj_left.shape[1])

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def projection(self) -> Float[Tensor, "d d"]:
        """The linear part ``P = I - proj_left @ proj_right`` (``r(x) = P x + (I - P) b``)."""
        eye = torch.eye(self.d, dtype=self.proj_left.dtype, device=self.proj_left.device)
        return eye - self.proj_left @ self.proj_right

    @property
    def is_orthogonal(self) -> bool:
        """Whether ``P`` is an orthogonal projection (symmetric), as for INLP, R-LACE and ``orth``."""
        return bool(torch.allclose(self.proj_left, self.proj_right.T, atol=1e-6))

    @property
    def removed_basis(self) -> Float[Tensor, "d r"]:
        """An orthonormal basis of the directions the edit ``x - r(x)`` lies in (columns)."""
        from .linalg import orthonormal_basis

        return orthonormal_basis(self.proj_left.double()).to(self.proj_left.dtype)

    def __repr__(self) -> str:
        where = f", site={self.config.site!r}" if self.config.site else ""
        return f"Eraser(method={self.method!r}, d={self.d}, rank={self.rank}, affine={self.bias is not None}{where})"

    def _repr_html_(self) -> str:
        from ..viz.cards import eraser_card

        return eraser_card(self)

    # --- applying it ------------------------------------------------------------------------------------
    def __call__(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """Erase the concept from ``x`` (any leading shape; computed in float32 or better, returned in x's dtype)."""
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.shape[-1] != self.d:
            raise ShapeError(f"input has width {x.shape[-1]} but the eraser was fitted on width d={self.d}")
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        L = self.proj_left.to(device=work.device, dtype=work.dtype)
        R = self.proj_right.to(device=work.device, dtype=work.dtype)
        delta = work if self.bias is None else work - self.bias.to(device=work.device, dtype=work.dtype)
        return (work - (delta @ R.T) @ L.T).to(x.dtype)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Eraser:
        """A copy with its tensors on ``device`` / in ``dtype``."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return dataclasses.replace(
            self, proj_left=mv(self.proj_left), proj_right=mv(self.proj_right), bias=mv(self.bias)
        )

    def hook(self, model: Any, site: str | Site, *, positions: Any = None) -> ErasureHook:
        """Apply the eraser at ``site`` inside the model's forward passes.

        Use as a context manager (``with eraser.hook(model, "resid_pre.2"): model(tokens)``) or pass
        ``.fwd_hooks`` to ``model.run_with_hooks``. ``positions``: ``None`` (every position), an int, a slice,
        a list of ints, or a boolean mask ``[batch, pos]``.

        Raises
        ------
        SiteError
            Unknown site (with the closest names).
        ShapeError
            The site's per-token width differs from the eraser's ``d``.
        """
        return ErasureHook(model, [(site, self)], positions=positions)

    # --- artefact ---------------------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write the artefact folder ``path`` (``cfg.json``, ``eraser.safetensors``, ``card.json``) atomically."""
        tensors = {"proj_left": self.proj_left, "proj_right": self.proj_right}
        if self.bias is not None:
            tensors["bias"] = self.bias
        tensors.update({f"extra.{k}": v for k, v in self.extras.items()})
        meta = {"format": FORMAT, "method": self.method}
        return save_artefact(path, self.config, tensors, weights=WEIGHTS, metadata=meta, card=self.card)

    @classmethod
    def load(cls, path: PathLike, *, device: str | torch.device = "cpu") -> Eraser:
        """Load an artefact folder written by :meth:`save`; bad files raise ``CheckpointError`` naming them."""
        path = Path(path)
        cfg, t, card = load_artefact(path, EraserConfig, format=FORMAT, weights=WEIGHTS, what="eraser", device=device)
        file = path / WEIGHTS
        for key in ("proj_left", "proj_right"):
            if key not in t:
                raise CheckpointError(f"{file} has no tensor {key!r} (found {sorted(t)})")
        L, R, b = t["proj_left"], t["proj_right"], t.get("bias")
        expect = {"proj_left": (cfg.d_in, cfg.rank), "proj_right": (cfg.rank, cfg.d_in)}
        for key, shape in expect.items():
            if tuple(t[key].shape) != shape:
                raise CheckpointError(
                    f"{file}: {key} has shape {tuple(t[key].shape)}, but cfg.json says {shape} (d_in, rank)"
                )
        if (b is not None) != cfg.affine or (b is not None and tuple(b.shape) != (cfg.d_in,)):
            raise CheckpointError(
                f"{file}: bias {None if b is None else tuple(b.shape)} does not match affine={cfg.affine}, d_in={cfg.d_in}"
            )
        extras = {k.removeprefix("extra."): v for k, v in t.items() if k.startswith("extra.")}
        return cls(L, R, b, cfg, extras, card)


def _pos_index(positions: Any) -> Any:
    if positions is None or isinstance(positions, (int, slice, Tensor)):
        return positions
    return torch.as_tensor(list(positions), dtype=torch.long)


def _hook_fn(eraser: Eraser, s: Site, positions: Any) -> Any:
    axis = s.pos_axis
    pos = _pos_index(positions)

    def fn(act: Tensor, hook: Any = None) -> Tensor:
        lead = act.shape[: axis + 1]
        flat = act.reshape(*lead, -1)
        if pos is None:
            return eraser(flat).reshape(act.shape)
        out = flat.clone()
        if isinstance(pos, Tensor) and pos.dtype == torch.bool:
            m = pos.to(act.device)
            if m.shape != lead:
                raise ShapeError(
                    f"position mask has shape {tuple(m.shape)}, activations at {s.name} have {tuple(lead)}"
                )
            out[m] = eraser(flat[m])
        else:
            idx = pos.to(act.device) if isinstance(pos, Tensor) else pos
            out[:, idx] = eraser(flat[:, idx])
        return out.reshape(act.shape)

    return fn


class ErasureHook:
    """Forward hooks applying one or several erasers; a context manager, or ``.fwd_hooks`` for ``run_with_hooks``."""

    def __init__(self, model: Any, pairs: Sequence[tuple[str | Site, Eraser]], *, positions: Any = None) -> None:
        self.model = model
        self.fwd_hooks: list[tuple[str, Any]] = []
        for name, eraser in pairs:
            s = resolve_site(model, name)
            if s.d is None:
                raise ShapeError(
                    f"site {s.name} has per-token shape {s.shape}; erasers apply to fixed-width activations"
                )
            if s.d != eraser.d:
                raise ShapeError(
                    f"eraser has width d={eraser.d} but site {s.name} has per-token shape {s.shape} (width {s.d}); "
                    f"it was fitted at {eraser.config.site or 'an unknown site'}"
                )
            enable(model, s)
            self.fwd_hooks.append((s.name, _hook_fn(eraser.to(_device(model)), s, positions)))
        self._stack: contextlib.ExitStack | None = None

    @property
    def sites(self) -> list[str]:
        return [n for n, _ in self.fwd_hooks]

    def __enter__(self) -> Any:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.model.hooks(fwd_hooks=self.fwd_hooks))
        return self.model

    def __exit__(self, *exc: Any) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.fwd_hooks)


def _device(model: Any) -> torch.device:
    from ..core.hooks import model_device

    return model_device(model)
