"""Configuration of SAEs and of training runs (frozen dataclasses, saved as ``cfg.json``)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.config import Config, check_choices
from ..core.errors import ConfigError

Normalize = Literal["none", "scale", "layer_norm"]
BDecInit = Literal["geometric_median", "mean", "zeros"]


class _ByArchitecture(type):
    """``SAEConfig(architecture=name, **fields)`` builds the config class registered for ``name``.

    The generic constructor is the pre-registry spelling (one config class for every architecture): it keeps
    the fields of the named architecture and ignores fields that belong only to other built-in architectures
    (``k`` given to a ReLU SAE, ``l1_coefficient`` to a TopK SAE: they have no effect there). An unknown field
    is an error naming the closest known one. Subclasses construct as plain dataclasses.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is not SAEConfig or args:
            return super().__call__(*args, **kwargs)
        target = _config_class(kwargs.get("architecture", "topk"))
        return target(**_own_fields(target, kwargs, "SAEConfig(...)"))


def _config_class(name: Any) -> type:
    from . import registry

    if not isinstance(name, str):
        raise ConfigError(f"architecture must be a string, got {name!r}")
    return registry.config_for(name)


def _own_fields(target: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``target``; others of built-in configs are dropped."""
    from . import registry

    own = {f.name for f in dataclasses.fields(target) if f.init}
    foreign: set[str] = set()
    for name in registry.BUILTIN_TRAINABLE:
        foreign |= {f.name for f in dataclasses.fields(registry.config_for(name)) if f.init}
    unknown = [k for k in values if k not in own and k not in foreign]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(own), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(hints)} for architecture {values.get('architecture', 'topk')!r}; "
            f"its fields: {', '.join(sorted(own))}"
        )
    return {k: v for k, v in values.items() if k in own}


@dataclass(frozen=True)
class SAEConfig(Config, metaclass=_ByArchitecture):
    """One SAE: the fields every architecture shares. Each architecture subclasses it with its own fields
    (:class:`~mechwork.sae.topk.TopKConfig`, :class:`~mechwork.sae.relu.ReLUConfig`, ...), registered in
    :mod:`mechwork.sae.registry`; ``SAEConfig(architecture="relu", ...)`` builds the registered subclass.

    Parameters
    ----------
    d_sae : int
        Number of latents (dictionary width; for operator SAEs, the number of concept channels).
    d_in : int or None
        Input width (the product of the per-token shape); ``None`` lets the trainer fill it in from the data.
    architecture : str
        Registry name (:data:`mechwork.sae.registry.Architecture`): ``topk`` (k-sparse, AuxK), ``relu``
        (ReLU + L1), ``mfr`` (TopK trained with mutual feature regularisation), ``lifted`` / ``cnn`` / ``fno``
        (SAE neural operators on ``[channels, grid]`` inputs), ``jumprelu`` (SAELens folders, inference only).
    normalize : {"none", "scale", "layer_norm"}
        Input normalisation. ``scale``: one constant so that the mean input norm is ``sqrt(d_in)``
        (estimated from data before training and folded into the weights after it, as SAELens does).
        ``layer_norm``: per token (as SAELens's ``layer_norm``).
    b_dec_init : {"geometric_median", "mean", "zeros"}
        Initial decoder bias, estimated from a data sample.
    dead_tokens : int
        A latent that has not fired for this many training tokens counts as dead.
    seed : int
        Seed of the weight initialisation.
    lr : float or None
        Learning rate of this SAE; ``None`` uses the run's ``lr`` (or ``2e-4 / sqrt(d_sae / 2**14)``).
    name : str or None
        Folder name of the trained SAE; default derived from the settings (``topk_k32_w2048_s0``).
    input_shape : tuple of int or None
        Per-token shape of the input when it is not flat (``hook_z``: ``(n_heads, d_head)``; operator SAEs:
        ``(channels, grid)``); its product is ``d_in``. ``None``: ``(d_in,)``.
    """

    d_sae: int = 4096
    d_in: int | None = None
    architecture: str = "topk"
    normalize: Normalize = "none"
    b_dec_init: BDecInit = "geometric_median"
    dead_tokens: int = 1_000_000
    seed: int = 0
    lr: float | None = None
    name: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if type(self) is SAEConfig:
            raise ConfigError(
                "SAEConfig is the shared base; build an architecture's config (SAEConfig(architecture=...))"
            )
        own = type(self).__dataclass_fields__["architecture"].default
        if self.architecture != own:
            raise ConfigError(
                f"{type(self).__name__} is the config of architecture {own!r}, got architecture={self.architecture!r}; "
                f"use cfg.replace(architecture={self.architecture!r}) or SAEConfig(architecture=...) to switch"
            )
        check_choices(self, "normalize", "b_dec_init")
        if self.d_sae < 1:
            raise ConfigError(f"d_sae must be >= 1, got {self.d_sae}")
        if self.d_in is not None and self.d_in < 1:
            raise ConfigError(f"d_in must be >= 1, got {self.d_in}")
        if self.input_shape is not None:
            if self.d_in is not None and math.prod(self.input_shape) != self.d_in:
                raise ConfigError(
                    f"input_shape {self.input_shape} has {math.prod(self.input_shape)} elements but d_in is {self.d_in}"
                )
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.dead_tokens < 1:
            raise ConfigError(f"dead_tokens must be >= 1, got {self.dead_tokens}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, ignore: tuple[str, ...] = (), source: str = "") -> Any:
        """Rebuild the registered config class named by ``d["architecture"]`` (default ``topk``)."""
        if cls is not SAEConfig:
            return super().from_dict(d, ignore=ignore, source=source)
        if not isinstance(d, dict):
            raise ConfigError(
                f"SAEConfig{' in ' + source if source else ''}: expected a JSON object, found {type(d).__name__}"
            )
        target = _config_class(d.get("architecture", "topk"))
        kept = _own_fields(target, {k: v for k, v in d.items() if k not in ignore}, source or "SAEConfig")
        return target.from_dict(kept, source=source)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``; changing ``architecture`` rebuilds the config class of the new one."""
        if "architecture" in changes and changes["architecture"] != self.architecture:
            values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
            return SAEConfig(**{**values, **changes})
        return dataclasses.replace(self, **changes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-token input shape."""
        if self.input_shape is not None:
            return tuple(self.input_shape)
        if self.d_in is None:
            raise ConfigError("d_in is not set (the trainer fills it in from the data)")
        return (self.d_in,)

    @property
    def sparsity_label(self) -> str:
        """The sparsity part of :attr:`label` (``k32``, ``l1-1``)."""
        return "dense"

    @property
    def label(self) -> str:
        """Folder name: ``name`` or ``<architecture>_<sparsity>_w<d_sae>_s<seed>``."""
        if self.name:
            return self.name
        return f"{self.architecture}_{self.sparsity_label}_w{self.d_sae}_s{self.seed}"


@dataclass(frozen=True)
class MFRPenalty(Config):
    """Mutual feature regularisation (Marks, Paren, Krueger, Barez, arXiv 2411.01220) across a run's SAEs.

    The joint loss adds ``weight * warmup(t) * mean over SAE pairs (1 - MMCS(W_i, W_j))`` where MMCS is the
    mean cosine between the decoder rows of two SAEs after matching them (see ``matching``) and
    ``warmup(t) = 0.5 (1 + cos(pi (T_w - t) / T_w))`` ramps from 0 to 1 over ``warmup_steps``.

    Parameters
    ----------
    weight : float
        Penalty weight (the authors' configs: synthetic 3, GPT-2 0.005; their default 0.1).
    warmup_steps : int
        Steps of the cosine ramp (the authors: 100).
    matching : {"hungarian", "cached", "max"}
        ``hungarian``: one-to-one Hungarian assignment (scipy ``linear_sum_assignment``) every step, gradient
        through the matched cosines (the authors'). ``cached``: the same assignment recomputed every
        ``refresh_every`` steps only. ``max``: symmetric mean-max cosine (each row's best partner; no
        assignment, GPU-friendly, memory in blocks). SAEs of different widths: the smaller dictionary's rows
        are each matched to a distinct row of the larger one (``max``: the mean of both directions).
    refresh_every : int
        ``cached``: steps between assignments.
    """

    weight: float = 0.1
    warmup_steps: int = 100
    matching: Literal["hungarian", "cached", "max"] = "hungarian"
    refresh_every: int = 50

    def __post_init__(self) -> None:
        check_choices(self, "matching")
        if not self.weight >= 0:
            raise ConfigError(f"MFR weight must be >= 0, got {self.weight}")
        if self.warmup_steps < 0 or self.refresh_every < 1:
            raise ConfigError("MFR warmup_steps must be >= 0 and refresh_every >= 1")


@dataclass(frozen=True)
class TrainConfig(Config):
    """A training run: one or several SAEs on the same activations.

    Data (exactly one of): ``store`` (an ActivationStore folder; ``site`` picks the site), ``model`` +
    ``site`` (stream activations from the generated corpus), or activations passed to :func:`train` directly.

    Parameters
    ----------
    saes : tuple of SAEConfig
        The SAEs trained together, all on the same batches (a sweep over k, width, seed ...).
    store, model, site : str or None
        Where activations come from (see above).
    tokens : int or None
        Training tokens (steps = tokens // batch_size). Default: one pass over the store / tensor; required
        when streaming from a model or an iterator of unknown length.
    batch_size : int
        Tokens per step.
    data_seed : int
        Seed of the shuffling (store / tensor) or of the streamed corpus.
    stream_buffer : int
        Streaming: tokens held in the shuffling buffer.
    source : str or None
        Streaming: the tokens the model reads: None (the generated corpus, ``data_seed``), ``"corpus"``, a
        ``.txt`` (one document per line) or ``.jsonl`` file (``text`` / ``tokens`` fields), or ``"task:NAME"``;
        tokenised with the model's own tokenizer. ``train(..., source=texts)`` takes any token source in Python.
    lr : float or None
        Adam learning rate (per-SAE ``lr`` overrides); ``None``: ``2e-4 / sqrt(d_sae / 2**14)`` per SAE.
    warmup_steps : int
        Linear learning-rate warm-up.
    decay_fraction : float
        Final fraction of training over which the learning rate decays linearly to ``lr_end_factor * lr``.
    betas, eps : Adam settings.
    grad_clip : float or None
        Gradient-norm clipping, per SAE.
    sparse : bool
        Use the sparse TopK kernels (:mod:`mechwork.sae.sparse`); ``False`` runs the dense reference step.
    autocast : bool
        bf16 autocast of the SAE step on CUDA (ignored on CPU).
    device : str or None
        Device of the SAEs (default: CUDA if available).
    out : str or None
        Output folder: ``saes/<name>/`` (final SAEs), ``checkpoint/`` (latest), ``metrics.jsonl``, ``cfg.json``.
    checkpoint_every : int
        Steps between checkpoints (0: only at the end). Needs ``out``.
    log_every : int
        Steps between metric records in ``metrics.jsonl`` and the progress bar.
    wandb_project : str or None
        Log to Weights & Biases under this project (only if wandb is installed).
    mfr : MFRPenalty or None
        Mutual feature regularisation across the run's SAEs (:mod:`mechwork.sae.mfr`; needs >= 2 TopK SAEs).
    """

    saes: tuple[SAEConfig, ...] = field(default_factory=lambda: (SAEConfig(),))
    store: str | None = None
    model: str | None = None
    site: str | None = None
    tokens: int | None = None
    batch_size: int = 2048
    data_seed: int = 0
    stream_buffer: int = 32768
    source: str | None = None
    lr: float | None = None
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    lr_end_factor: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    sparse: bool = True
    autocast: bool = True
    device: str | None = None
    out: str | None = None
    checkpoint_every: int = 0
    log_every: int = 50
    wandb_project: str | None = None
    mfr: MFRPenalty | None = None

    def __post_init__(self) -> None:
        if not self.saes:
            raise ConfigError("saes is empty: give at least one SAEConfig")
        if not all(isinstance(s, SAEConfig) for s in self.saes):
            raise ConfigError("saes must be SAEConfig instances")
        labels = [s.label for s in self.saes]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"two SAEs in one run share the name(s) {dup}; give them distinct names or settings")
        if self.store is not None and self.model is not None:
            raise ConfigError("give either store or model (streaming), not both")
        if self.model is not None and self.site is None:
            raise ConfigError("streaming from a model needs a site")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tokens is not None and self.tokens < self.batch_size:
            raise ConfigError(f"tokens ({self.tokens}) must be at least one batch ({self.batch_size})")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.decay_fraction <= 1.0 or not 0.0 <= self.lr_end_factor <= 1.0:
            raise ConfigError("decay_fraction and lr_end_factor must be between 0 and 1")
        if self.checkpoint_every < 0 or self.log_every < 1 or self.warmup_steps < 0:
            raise ConfigError("checkpoint_every >= 0, log_every >= 1 and warmup_steps >= 0 are required")
        if self.checkpoint_every and self.out is None:
            raise ConfigError("checkpoint_every needs an output folder (out)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.mfr is not None:
            if len(self.saes) < 2:
                raise ConfigError(
                    f"an MFR run needs at least 2 SAEs (the penalty compares their dictionaries), got {len(self.saes)}; "
                    "build them with mechwork.sae.mfr.mfr_saes(base, n) or drop mfr"
                )
            widths = {s.d_in for s in self.saes}
            not_topk = [s.label for s in self.saes if not hasattr(s, "k")]
            if not_topk:
                raise ConfigError(f"MFR couples TopK SAEs (Marks et al.); {not_topk} are not TopK")
            if len(widths - {None}) > 1:
                raise ConfigError(
                    f"the SAEs of an MFR run see the same data; their d_in differ: {sorted(widths - {None})}"
                )

    def lr_for(self, sae: SAEConfig) -> float:
        """Learning rate of one SAE (its own, the run's, or the width-scaled default)."""
        if sae.lr is not None:
            return sae.lr
        if self.lr is not None:
            return self.lr
        return 2e-4 / math.sqrt(sae.d_sae / 2**14)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of the learning rate at ``step``: linear warm-up, constant, linear decay at the end."""
        f = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            f = (step + 1) / self.warmup_steps
        n_decay = int(self.decay_fraction * total_steps)
        start = total_steps - n_decay
        if n_decay and step >= start:
            frac = (step - start + 1) / n_decay
            f = min(f, 1.0 - (1.0 - self.lr_end_factor) * frac)
        return f


def sweep(base: SAEConfig, **axes: list) -> tuple[SAEConfig, ...]:
    """The product of ``base`` over lists of field values: ``sweep(SAEConfig(), k=[16, 32], seed=[0, 1])``."""
    import itertools

    names = list(axes)
    for n in names:
        if n not in type(base).__dataclass_fields__:
            raise ConfigError(f"sweep over unknown {type(base).__name__} field {n!r}")
    return tuple(base.replace(**dict(zip(names, vals))) for vals in itertools.product(*(axes[n] for n in names)))
