"""Fitting erasers from a model: collect labelled activations at a site (with any upstream erasers hooked in),
fit one eraser, or scrub several sites in causal order, each fitted on activations already erased upstream.

Labelled data is a task with labels (``"gender"``), a :class:`~mechwork.tasks.PromptBatch`, or a pair
``(tokens, labels)`` with one label per sequence ``[batch]`` or per token ``[batch, pos]``. ``positions`` says
which token rows of each prompt carry its label: ``"all"`` (every real token, BOS included), ``"content"``
(every real token but BOS), ``"last"`` (the prediction position) or a boolean mask ``[batch, pos]``.

One eraser fitted on rows from many positions removes the direction that separates the classes *on average over
positions*; where the concept sits in a different direction at each position (the prediction position after
attention has moved it there, say) that leaves it in place. ``stratify="position"`` (LEACE) asks instead for
``Cov(r(X), z | position) = 0`` at every position: LEACE with one concept column per position,
``z_j = 1[pos = j] (z - E[z | pos = j])``; the eraser is still one affine map applied everywhere (rank up to the
number of positions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.config import Config, save_config
from ..core.errors import CheckpointError, ConfigError, DataError, ShapeError
from ..core.hooks import check_tokens, model_device, run_with_hooks
from ..core.io import PathLike, atomic_dir, read_json
from ..core.sites import Site, enable, resolve, stop_at_layer
from ._method import Method
from .eraser import Eraser, ErasureHook

POSITIONS = ("all", "content", "last")


@dataclass(frozen=True)
class Labelled:
    """Token prompts with a label per prompt or per token, and which token rows to use."""

    tokens: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    task: str | None
    positions: str


def labelled(data: Any, *, n: int = 2000, seed: int = 0, split: str = "train", positions: Any = "all") -> Labelled:
    """Resolve ``data`` (task name, Task, PromptBatch or ``(tokens, labels)``) into tokens, labels and a row mask."""
    from ..tasks import PromptBatch, Task, get

    pos_name = positions if isinstance(positions, str) else "mask"
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ConfigError(f"positions must be one of {POSITIONS} or a boolean mask [batch, pos], got {positions!r}")
    if isinstance(data, (str, Task)):
        task = get(data) if isinstance(data, str) else data
        data = task.prompts(n, seed=seed, split=split)
    if isinstance(data, PromptBatch):
        if data.labels is None:
            raise DataError(f"task {data.task!r} has no labels; erasure needs a labelled task such as 'gender'")
        tokens, last, task_name = data.clean, data.pos, data.task
        per_prompt = data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        tokens, per_prompt = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [batch, pos], got {tuple(tokens.shape)}")
        last = torch.full((tokens.shape[0],), tokens.shape[1] - 1)
        task_name = None
    else:
        raise DataError(
            f"data must be a task name, a Task, a PromptBatch or (tokens, labels); got {type(data).__name__}"
        )
    b, p = tokens.shape
    if per_prompt.shape == (b,):
        labels = per_prompt[:, None].expand(b, p)
    elif per_prompt.shape == (b, p):
        labels = per_prompt
    else:
        raise ShapeError(f"labels must have shape [batch]={b} or [batch, pos]={(b, p)}, got {tuple(per_prompt.shape)}")
    ar = torch.arange(p)[None, :]
    if isinstance(positions, Tensor):
        if positions.shape != (b, p) or positions.dtype != torch.bool:
            raise ShapeError(
                f"a positions mask must be bool [batch, pos]={(b, p)}, got {positions.dtype} {tuple(positions.shape)}"
            )
        mask = positions
    elif positions == "last":
        mask = ar == last[:, None]
    else:
        mask = ar <= last[:, None]
        if positions == "content":
            mask = mask & (ar > 0)
    return Labelled(tokens.long(), labels.long(), mask, task_name, pos_name)


def collect(
    model: Any,
    data: Labelled,
    site: str | Site,
    *,
    upstream: Sequence[tuple[str, Eraser]] = (),
    batch_size: int = 128,
) -> tuple[Float[Tensor, "rows d"], Int[Tensor, " rows"]]:
    """Activations at ``site`` of the rows ``data.mask`` selects (flattened per token) and their labels.

    ``upstream`` erasers are hooked in during the pass (an eraser at ``site`` itself is applied before the
    activations are read).
    """
    s = resolve(model, site)[0]
    if s.d is None:
        raise ShapeError(f"site {s.name} has per-token shape {s.shape}; erasure needs fixed-width activations")
    enable(model, s)
    tokens = check_tokens(model, data.tokens)
    dev = model_device(model)
    hook = ErasureHook(model, upstream) if upstream else None
    stop = stop_at_layer(model, [s] + ([resolve(model, n)[0] for n, _ in upstream] if upstream else []))
    xs, zs = [], []
    for lo in range(0, tokens.shape[0], batch_size):
        got: dict[str, Tensor] = {}

        def grab(t: Tensor, hook: Any = None) -> None:
            got["x"] = t.detach()

        hooks = (hook.fwd_hooks if hook else []) + [(s.name, grab)]
        with torch.inference_mode():
            run_with_hooks(model, tokens[lo : lo + batch_size].to(dev), hooks, stop_at_layer=stop, return_type=None)
        x = got["x"]
        x = x.reshape(*x.shape[:2], -1)  # [batch, pos, d] (head axes flattened)
        m = data.mask[lo : lo + batch_size].to(x.device)
        xs.append(x[m].float().cpu())
        zs.append(data.labels[lo : lo + batch_size][m.cpu()])
    X, z = torch.cat(xs), torch.cat(zs)
    if X.shape[0] == 0:
        raise DataError("the positions selected no token rows")
    return X, z


def _method(method: str | Method, options: dict[str, Any]) -> Method:
    from . import METHODS

    if isinstance(method, Method):
        return method.with_options(**options)
    if method not in METHODS:
        raise ConfigError(f"unknown erasure method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]().with_options(**options)


def stratified_concept(labels: Int[Tensor, " rows"], groups: Int[Tensor, " rows"]) -> Float[Tensor, "rows k"]:
    """Concept columns whose zero covariance with ``r(X)`` means no class signal *within* any group:
    ``1[g = j] (onehot(z) - E[onehot(z) | g = j])`` for every group ``j`` (one column per group when binary)."""
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise DataError(f"z has a single class ({classes.tolist()}); erasing a concept needs at least two classes")
    onehot = (labels[:, None] == classes[None, :]).double()
    if classes.numel() == 2:
        onehot = onehot[:, 1:]
    cols = []
    for j in torch.unique(groups):
        sel = groups == j
        col = torch.zeros_like(onehot)
        col[sel] = onehot[sel] - onehot[sel].mean(0)
        cols.append(col)
    return torch.cat(cols, 1)


def _fit_rows(m: Method, X: Tensor, z: Tensor, data: Labelled, stratify: str | None) -> Eraser:
    if stratify is None:
        return m.fit(X, z)
    from .leace import LEACE

    if stratify != "position":
        raise ConfigError(f"stratify must be None or 'position', got {stratify!r}")
    if not isinstance(m, LEACE):
        raise ConfigError(
            "stratify='position' is a LEACE option (a constraint per position); INLP and R-LACE train one classifier"
        )
    groups = data.mask.nonzero()[:, 1]  # the row order of collect(): row-major over the mask
    return m.fit(X, stratified_concept(z, groups))


def _stamp(eraser: Eraser, model: Any, s: Site, data: Labelled, stratify: str | None = None) -> Eraser:
    spec = getattr(model, "mechwork_spec", None) or getattr(model.cfg, "model_name", None)
    pos = data.positions + (f"/stratified-by-{stratify}" if stratify else "")
    cfg = dataclasses.replace(eraser.config, model=spec, site=s.name, task=data.task, positions=pos)
    return dataclasses.replace(eraser, config=cfg)


def fit(
    model: Any,
    data: Any,
    site: str | Site,
    method: str | Method = "leace",
    *,
    n: int = 2000,
    seed: int = 0,
    positions: Any = "all",
    stratify: str | None = None,
    batch_size: int = 128,
    upstream: Sequence[tuple[str, Eraser]] = (),
    **options: Any,
) -> Eraser:
    """Fit an eraser of a labelled concept at one site of a model.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    data : str, Task, PromptBatch or (tokens, labels)
        ``"gender"`` draws ``n`` prompts (split ``train``, ``seed``).
    site : str
        Where the eraser will sit, e.g. ``"resid_pre.2"``.
    method : {"leace", "inlp", "rlace"} or a configured method (``RLACE(rank=2)``)
    positions : {"all", "content", "last"} or Bool[Tensor, "batch pos"]
        Which token rows carry the label.
    stratify : {None, "position"}
        LEACE only: remove the concept within every position rather than on average (module docstring).
    upstream : list of (site, Eraser)
        Erasers hooked in while collecting (used by :func:`scrub`).
    **options
        Options of the method (``rank=2``, ``n_iter=10``...).
    """
    m = _method(method, options)
    lab = labelled(data, n=n, seed=seed, positions=positions)
    s = resolve(model, site)[0]
    X, z = collect(model, lab, s, upstream=upstream, batch_size=batch_size)
    return _stamp(_fit_rows(m, X, z, lab, stratify), model, s, lab, stratify)


def causal_order(model: Any, site_names: Sequence[str | Site]) -> list[Site]:
    """The sites in the order a forward pass reaches them (measured with one short pass)."""
    site_list = resolve(model, site_names)
    seen: list[str] = []

    def rec(name: str) -> Any:
        def hook(t: Tensor, hook: Any = None) -> None:
            if name not in seen:
                seen.append(name)

        return hook

    for s in site_list:
        enable(model, s)
    probe = torch.zeros((1, 2), dtype=torch.long, device=model_device(model))
    with torch.inference_mode():
        run_with_hooks(
            model,
            probe,
            [(s.name, rec(s.name)) for s in site_list],
            stop_at_layer=stop_at_layer(model, site_list),
            return_type=None,
        )
    by_name = {s.name: s for s in site_list}
    missing = [s.name for s in site_list if s.name not in seen]
    if missing:
        raise DataError(f"hooks did not fire for {missing}")
    return [by_name[n] for n in seen]


@dataclass(frozen=True)
class ScrubberConfig(Config):
    sites: tuple[str, ...]
    method: str
    aliases: tuple[str, ...] = ()
    model: str | None = None
    task: str | None = None
    format: str = "mechwork-scrubber"


@dataclass(frozen=True, eq=False)
class Scrubber:
    """Erasers at several sites, in causal order, each fitted on activations erased upstream."""

    erasers: tuple[tuple[str, Eraser], ...]
    aliases: tuple[str, ...] = ()

    @property
    def sites(self) -> list[str]:
        return [s for s, _ in self.erasers]

    def __iter__(self) -> Iterator[tuple[str, Eraser]]:
        return iter(self.erasers)

    def __len__(self) -> int:
        return len(self.erasers)

    def __getitem__(self, site: str) -> Eraser:
        """The eraser at ``site`` (full hook name or ``kind.layer`` alias)."""
        aliases = self.aliases or ("",) * len(self.erasers)
        for (s, e), a in zip(self.erasers, aliases):
            if site in (s, a):
                return e
        raise KeyError(f"no eraser at {site!r}; sites: {self.sites}")

    def hook(self, model: Any, *, positions: Any = None) -> ErasureHook:
        """All erasers hooked at their sites (a context manager, or ``.fwd_hooks``)."""
        return ErasureHook(model, self.erasers, positions=positions)

    def save(self, path: PathLike) -> Path:
        first = self.erasers[0][1].config if self.erasers else None
        cfg = ScrubberConfig(
            tuple(self.sites),
            first.method if first else "",
            tuple(self.aliases),
            first.model if first else None,
            first.task if first else None,
        )
        with atomic_dir(path) as tmp:
            save_config(tmp / "cfg.json", cfg)
            for i, (_, e) in enumerate(self.erasers):
                e.save(tmp / f"{i:02d}")
        return Path(path)

    @classmethod
    def load(cls, path: PathLike, *, device: Any = "cpu") -> Scrubber:
        path = Path(path)
        raw = read_json(path / "cfg.json", what="scrubber config")
        if not isinstance(raw, dict) or raw.get("format") != "mechwork-scrubber":
            raise CheckpointError(f"{path / 'cfg.json'} is not a mechwork scrubber config")
        cfg = ScrubberConfig.from_dict(raw, ignore=("mechwork_version",), source=str(path / "cfg.json"))
        return cls(
            tuple((s, Eraser.load(path / f"{i:02d}", device=device)) for i, s in enumerate(cfg.sites)), cfg.aliases
        )


def scrub(
    model: Any,
    data: Any,
    sites: Sequence[str | Site],
    method: str | Method = "leace",
    *,
    n: int = 2000,
    seed: int = 0,
    positions: Any = "all",
    stratify: str | None = None,
    batch_size: int = 128,
    **options: Any,
) -> Scrubber:
    """Concept scrubbing: fit an eraser at every site in causal order, each on activations already erased upstream.

    Returns a :class:`Scrubber`; ``with scrubber.hook(model): ...`` applies them all.
    """
    m = _method(method, options)
    lab = labelled(data, n=n, seed=seed, positions=positions)
    done: list[tuple[str, Eraser]] = []
    order = causal_order(model, sites)
    for s in order:
        X, z = collect(model, lab, s, upstream=done, batch_size=batch_size)
        done.append((s.name, _stamp(_fit_rows(m, X, z, lab, stratify), model, s, lab, stratify)))
    return Scrubber(tuple(done), tuple(s.alias for s in order))
