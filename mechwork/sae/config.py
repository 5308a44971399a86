"""Configuration of SAEs and of training runs (frozen dataclasses, saved as ``cfg.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.config import Config
from ..core.errors import ConfigError

#: architectures a config may name; :func:`mechwork.sae.model.register_architecture` adds more
ARCHITECTURES: list[str] = ["topk", "relu"]
NORMALIZE = ("none", "scale", "layer_norm")
B_DEC_INIT = ("geometric_median", "mean", "zeros")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {options}, got {value!r}")


@dataclass(frozen=True)
class SAEConfig(Config):
    """One SAE: architecture, size, sparsity and the hyper-parameters of its own loss.

    Parameters
    ----------
    d_sae : int
        Number of latents (dictionary width).
    d_in : int or None
        Input width; ``None`` lets the trainer fill it in from the data.
    architecture : {"topk", "relu"}
        ``topk``: k-sparse autoencoder (Makhzani & Frey; Gao et al.) with AuxK. ``relu``: ReLU + L1 baseline.
    k : int
        Active latents per token (TopK) at the end of training.
    alpha : float
        Inference-time multiplier: :meth:`SAE.encode` keeps ``round(alpha * k)`` latents (Makhzani & Frey's
        alpha-k encoding). 1.0 reproduces the training sparsity.
    k_start : int or None
        Start of the k schedule: k decreases linearly from ``k_start`` to ``k`` over the first
        ``k_anneal`` fraction of training, then stays at ``k``. ``None`` trains at ``k`` throughout.
    k_anneal : float
        Fraction of the training steps over which k decreases.
    k_aux : int or None
        Dead latents used by the AuxK loss per token (default ``d_in // 2``, Gao et al. App. B.1).
    aux_coefficient : float
        Weight of the AuxK loss (Gao et al.: 1/32), on a residual-variance-normalised MSE.
    dead_tokens : int
        A latent that has not fired for this many training tokens counts as dead (feeds AuxK).
    l1_coefficient : float
        ReLU baseline: weight of ``sum_j f_j`` (decoder rows have unit norm) on a variance-normalised MSE.
    l1_warmup : float
        ReLU baseline: fraction of training over which the L1 weight rises linearly from 0.
    normalize : {"none", "scale", "layer_norm"}
        Input normalisation. ``scale``: one constant so that the mean input norm is ``sqrt(d_in)``
        (estimated from data before training). ``layer_norm``: per token (as SAELens's ``layer_norm``).
    b_dec_init : {"geometric_median", "mean", "zeros"}
        Initial decoder bias, estimated from a data sample.
    seed : int
        Seed of the weight initialisation.
    lr : float or None
        Learning rate of this SAE; ``None`` uses the run's ``lr`` (or ``2e-4 / sqrt(d_sae / 2**14)``).
    name : str or None
        Folder name of the trained SAE; default derived from the settings (``topk_k32_w2048_s0``).
    input_shape : tuple of int or None
        Per-token shape of the input when it is not flat (``hook_z``: ``(n_heads, d_head)``); its product is
        ``d_in``. ``None``: ``(d_in,)``.
    """

    d_sae: int = 4096
    d_in: int | None = None
    architecture: str = "topk"
    k: int = 32
    alpha: float = 1.0
    k_start: int | None = None
    k_anneal: float = 0.5
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 1_000_000
    l1_coefficient: float = 1.0
    l1_warmup: float = 0.05
    normalize: str = "none"
    b_dec_init: str = "geometric_median"
    seed: int = 0
    lr: float | None = None
    name: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _choice("architecture", self.architecture, tuple(ARCHITECTURES))
        _choice("normalize", self.normalize, NORMALIZE)
        _choice("b_dec_init", self.b_dec_init, B_DEC_INIT)
        if self.d_sae < 1:
            raise ConfigError(f"d_sae must be >= 1, got {self.d_sae}")
        if self.d_in is not None and self.d_in < 1:
            raise ConfigError(f"d_in must be >= 1, got {self.d_in}")
        if self.input_shape is not None:
            if self.d_in is not None and math.prod(self.input_shape) != self.d_in:
                raise ConfigError(
                    f"input_shape {self.input_shape} has {math.prod(self.input_shape)} elements but d_in is {self.d_in}"
                )
        if self.architecture != "relu":  # every other architecture selects k latents
            if not 1 <= self.k <= self.d_sae:
                raise ConfigError(f"k must be between 1 and d_sae={self.d_sae}, got k={self.k}")
            if self.k_start is not None and not self.k <= self.k_start <= self.d_sae:
                raise ConfigError(f"k_start must be between k={self.k} and d_sae={self.d_sae}, got {self.k_start}")
            if self.alpha < 1.0 or round(self.alpha * self.k) > self.d_sae:
                raise ConfigError(
                    f"alpha must be >= 1 with round(alpha*k) <= d_sae, got alpha={self.alpha}, k={self.k}"
                )
        if not 0.0 <= self.k_anneal <= 1.0 or not 0.0 <= self.l1_warmup <= 1.0:
            raise ConfigError("k_anneal and l1_warmup are fractions of training between 0 and 1")
        if self.k_aux is not None and self.k_aux < 0:
            raise ConfigError(f"k_aux must be >= 0, got {self.k_aux}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.dead_tokens < 1:
            raise ConfigError(f"dead_tokens must be >= 1, got {self.dead_tokens}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-token input shape."""
        if self.input_shape is not None:
            return tuple(self.input_shape)
        if self.d_in is None:
            raise ConfigError("d_in is not set (the trainer fills it in from the data)")
        return (self.d_in,)

    @property
    def k_infer(self) -> int:
        """Latents kept by :meth:`SAE.encode` at inference: ``round(alpha * k)``."""
        return int(round(self.alpha * self.k))

    @property
    def k_aux_eff(self) -> int:
        return (self.d_in or 0) // 2 if self.k_aux is None else self.k_aux

    @property
    def label(self) -> str:
        """Folder name: ``name`` or ``topk_k32_w2048_s0`` / ``relu_l1-1.0_w2048_s0``."""
        if self.name:
            return self.name
        sparsity = f"k{self.k}" if self.architecture != "relu" else f"l1-{self.l1_coefficient:g}"
        return f"{self.architecture}_{sparsity}_w{self.d_sae}_s{self.seed}"

    def k_at(self, step: int, total_steps: int) -> int:
        """k used at training ``step`` (the k-sparse schedule)."""
        if self.k_start is None or self.k_start == self.k or total_steps <= 0:
            return self.k
        n = max(1, int(self.k_anneal * total_steps))
        if step >= n:
            return self.k
        return int(round(self.k_start + (self.k - self.k_start) * step / n))


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
    """

    saes: tuple[SAEConfig, ...] = field(default_factory=lambda: (SAEConfig(),))
    store: str | None = None
    model: str | None = None
    site: str | None = None
    tokens: int | None = None
    batch_size: int = 2048
    data_seed: int = 0
    stream_buffer: int = 32768
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
        if n not in SAEConfig.__dataclass_fields__:
            raise ConfigError(f"sweep over unknown SAEConfig field {n!r}")
    return tuple(base.replace(**dict(zip(names, vals))) for vals in itertools.product(*(axes[n] for n in names)))
