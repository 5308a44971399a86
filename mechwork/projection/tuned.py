"""The tuned lens (Belrose et al. 2023; METHODS 4.4): one affine translator per residual state but the last,
``h -> h + A_l h + b_l``, zero-initialised (so an untrained lens *is* the logit lens), trained on the model's own
activations by ``KL(final-layer distribution || lens distribution)`` at the same token, then read out through the
model's final norm and unembedding.

>>> lens = mechwork.projection.train_tuned_lens(model, steps=300)          # streams the model's own data
>>> lens = mechwork.projection.train_tuned_lens(model, store=acts)         # or reads an activation cache
>>> lens.save("lenses/toy-mixed"); lens = TunedLens.load("lenses/toy-mixed", model=model)
>>> lens(model, "When Mary and John ...").summary()                         # same statistics as logit_lens

The artefact is a folder: ``cfg.json`` (the training config, the model spec, a digest of the model's embedding and
unembedding, widths) and ``lens.safetensors``; loading it for a different model is refused.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.config import Config, save_config
from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.hooks import capture, model_device
from ..core.io import atomic_dir, load_tensors, read_json, save_tensors
from ._model import require_lm_head
from .lens import LensResult, lens_labels, resid_names, run_lens

FORMAT = "mechwork-tuned-lens"


@dataclass(frozen=True)
class TunedLensConfig(Config):
    """How a tuned lens is trained.

    Parameters
    ----------
    steps : int
        Optimiser steps.
    batch_size : int
        Context windows (documents for the toy corpus) per step when streaming; rows (tokens) when reading a cache.
    context : int, optional
        Tokens per streamed window (default: the model's context).
    lr : float
        Peak learning rate (linear warm-up over ``warmup`` steps, then linear decay to 0).
    optimizer : {"adam", "sgd"}
        Adam (fast on small models) or SGD with Nesterov momentum (the paper's choice for large ones).
    momentum : float
        SGD momentum.
    weight_decay : float
        Pulls the translators toward zero, i.e. toward the logit lens.
    warmup : int
        Warm-up steps.
    grad_clip : float
        Gradient-norm clip.
    seed : int
        Seed of the data order.
    """

    steps: int = 250
    batch_size: int = 16
    context: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup: int = 25
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"TunedLensConfig.{f} must be a positive integer, got {v!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"TunedLensConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"TunedLensConfig.lr must be positive, got {self.lr}")


def model_digest(model: Any) -> str:
    """A short digest of the model's embedding and unembedding (what a lens is tied to)."""
    h = hashlib.sha256()
    for t in (model.W_E, model.W_U):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TunedLens(torch.nn.Module):
    """Affine translators ``[n_layers, d, d]`` and biases ``[n_layers, d]`` for the states ``embed, L0 .. L{n-2}``."""

    def __init__(self, d_model: int, n_layers: int, *, cfg: TunedLensConfig | None = None, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg or TunedLensConfig()
        self.meta = dict(meta or {})
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))

    @classmethod
    def for_model(cls, model: Any, cfg: TunedLensConfig | None = None) -> TunedLens:
        """A zero (= logit) lens shaped for ``model``, recording what it belongs to."""
        require_lm_head(model, "the tuned lens")
        meta = {
            "model_spec": str(getattr(model, "mechwork_spec", "")),
            "model_digest": model_digest(model),
            "d_model": int(model.cfg.d_model),
            "n_layers": int(model.cfg.n_layers),
            "d_vocab": int(model.cfg.d_vocab),
        }
        lens = cls(meta["d_model"], meta["n_layers"], cfg=cfg, meta=meta)
        return lens.to(model_device(model))

    def translate(self, i: int, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """State ``i`` (0 = embed) mapped toward the final layer's basis: ``h + A_i h + b_i``."""
        return h + h @ self.weight[i].T.to(h.dtype) + self.bias[i].to(h.dtype)

    def check(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a model other than the one this lens was trained on (shapes always; weights when ``strict``)."""
        want = {k: self.meta.get(k) for k in ("d_model", "n_layers", "d_vocab")}
        have = {k: int(getattr(model.cfg, k)) for k in want}
        if want != have:
            raise ConfigError(
                f"tuned lens trained on {self.meta.get('model_spec') or 'another model'} {want} cannot read this "
                f"model {have}"
            )
        if strict and self.meta.get("model_digest") != model_digest(model):
            raise ConfigError(
                f"tuned lens was trained on {self.meta.get('model_spec') or 'another model'} (embedding digest "
                f"{self.meta.get('model_digest')}); this model's embedding/unembedding differ "
                f"({model_digest(model)}). Train a lens for this model (`mechwork lens train`), or pass strict=False "
                "to apply it to a same-shaped model (e.g. a fine-tuned copy) at your own risk"
            )

    def __call__(self, model: Any, prompts: Any, *, pos: Any = -1, strict: bool = True) -> LensResult:  # type: ignore[override]
        """The tuned lens applied to ``prompts`` (same arguments and result type as ``logit_lens``)."""
        self.check(model, strict=strict)
        with torch.no_grad():
            return run_lens(model, prompts, pos=pos, translate=self.translate, kind="tuned")

    # ------------------------------------------------------------------------------------------ disk
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            save_config(tmp / "cfg.json", self.cfg, format=FORMAT, **self.meta)
            save_tensors(tmp / "lens.safetensors", {"weight": self.weight, "bias": self.bias})
        return path

    @classmethod
    def load(cls, path: str | Path, *, model: Any = None, strict: bool = True) -> TunedLens:
        """Load a lens folder; with ``model`` also check it belongs to that model."""
        path = Path(path)
        raw = read_json(path / "cfg.json", what="tuned-lens config")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
            raise CheckpointError(f"{path / 'cfg.json'} is not a tuned lens (format {found!r})")
        fields = set(TunedLensConfig.__dataclass_fields__)
        meta = {k: v for k, v in raw.items() if k not in fields and k not in ("format", "mechwork_version")}
        missing = [k for k in ("model_digest", "d_model", "n_layers", "d_vocab") if not meta.get(k)]
        if missing:
            raise CheckpointError(f"{path / 'cfg.json'} lacks {missing}; the lens folder is truncated or foreign")
        bad = [
            k for k in ("d_model", "n_layers", "d_vocab") if not isinstance(meta[k], int) or isinstance(meta[k], bool)
        ]
        if bad or not 1 <= meta["n_layers"] <= 1024 or not 1 <= meta["d_model"] <= 1 << 16:
            raise CheckpointError(f"{path / 'cfg.json'}: n_layers/d_model/d_vocab must be positive integers in range")
        cfg = TunedLensConfig.from_dict(
            raw, ignore=(*meta, "format", "mechwork_version"), source=str(path / "cfg.json")
        )
        t = load_tensors(path / "lens.safetensors", what="tuned-lens weights", floating=True)
        L, d = meta["n_layers"], meta["d_model"]
        if set(t) != {"weight", "bias"} or tuple(t["weight"].shape) != (L, d, d) or tuple(t["bias"].shape) != (L, d):
            raise CheckpointError(
                f"{path / 'lens.safetensors'}: expected weight [{L}, {d}, {d}] and bias [{L}, {d}], found "
                f"{ {k: tuple(v.shape) for k, v in t.items()} }"
            )
        lens = cls(d, L, cfg=cfg, meta=meta)
        with torch.no_grad():
            lens.weight.copy_(t["weight"])
            lens.bias.copy_(t["bias"])
        if model is not None:
            lens.check(model, strict=strict)
            lens = lens.to(model_device(model))
        return lens

    def __repr__(self) -> str:
        return (
            f"TunedLens({self.meta.get('model_spec') or '?'}, {self.meta.get('n_layers')} translators of "
            f"{self.meta.get('d_model')}x{self.meta.get('d_model')}, trained {self.meta.get('steps_done', 0)} steps)"
        )

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        m = self.meta
        facts = {"model": m.get("model_spec"), "translators": f"{m.get('n_layers')} x {m.get('d_model')}x{m.get('d_model')}",
                 "steps": m.get("steps_done"), "tokens seen": m.get("tokens_seen"), "train KL": m.get("train_loss")}  # fmt: skip
        return card("TunedLens", facts)


# ---------------------------------------------------------------------------------------------- training
def _default_source(model: Any) -> Any:
    from ..data.tokenizer import vocab_size

    if int(model.cfg.d_vocab) != vocab_size():
        raise DataError(
            "train_tuned_lens needs a source of text for this model (texts, a file, a token tensor, a generator) "
            "or an activation cache (store=...); the default corpus only fits the shipped toy vocabulary"
        )
    return toy_corpus(model, seed=1234, split="train")


def toy_corpus(model: Any, *, seed: int, split: str) -> Any:
    """The generated corpus with the document mix a shipped model was trained on (default mix otherwise)."""
    from ..data.corpus import Corpus
    from ..models.zoo import ENTRIES

    entry = ENTRIES.get(str(getattr(model, "mechwork_spec", "")))
    if entry is None:
        return Corpus(seed=seed, split=split)
    return Corpus(seed=seed, split=split, mix=entry.train.mix or None, options=entry.train.doc_options or None)


def _batches(model: Any, source: Any, n: int, *, seed: int, context: int | None, loop: bool) -> Any:
    """Right-padded batches (:class:`~mechwork.core.prompts.Encoded`) of ``n`` rows, one document per row (long
    documents split at the context, BOS by the model's convention), as the shipped toys were trained."""
    import itertools

    from ..core.prompts import pad_rows
    from ..data.sources import model_rows, token_source

    rows = model_rows(model, lambda: token_source(model, source, seed=seed), loop=loop, what="the lens data")
    while True:
        batch = [r[:context] if context else r for r in itertools.islice(rows, n)]
        if not batch:
            return
        yield pad_rows(model, batch)


def _stream(model: Any, source: Any, cfg: TunedLensConfig) -> Any:
    """Endless batches of residual states ``[n_states] x [real tokens, d]`` from running the model on ``source``."""
    names = resid_names(model)
    dev = model_device(model)
    got = False
    for enc in _batches(model, source, cfg.batch_size, seed=cfg.seed, context=cfg.context, loop=True):
        enc = enc.to(dev)
        acts = capture(model, enc.tokens, names, attention_mask=enc.attention_mask, stop=False)
        got = True
        yield [acts[n][enc.mask] for n in names]
    if not got:
        raise DataError("the training source yielded no tokens")


def _from_store(model: Any, store: Any, cfg: TunedLensConfig) -> Any:
    names = resid_names(model)
    missing = [n for n in names if n not in store]
    if missing:
        raise DataError(
            f"the activation cache lacks {missing}; a tuned lens needs every residual state: collect {', '.join(names)}"
        )
    if len(store) < cfg.batch_size:
        raise DataError(f"the activation cache has {len(store)} tokens, fewer than one batch ({cfg.batch_size})")
    dev = model_device(model)
    it = store.batches(names, cfg.batch_size, shuffle=True, seed=cfg.seed, epochs=None, device=dev, drop_last=True)
    for batch in it:
        yield [batch[store.site_name(n)] for n in names]


def train_tuned_lens(
    model: Any,
    source: Any = None,
    *,
    store: Any = None,
    cfg: TunedLensConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> TunedLens:
    """Train a tuned lens for ``model``.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    source : texts, token tensor, file, task, Corpus or generator, optional
        Streamed through the model (default for the shipped toys: the generated corpus).
    store : ActivationStore, optional
        Train from a cache holding every residual state (``resid_pre.0`` and each ``resid_post``) instead.
    cfg : TunedLensConfig, optional
        Keyword ``overrides`` replace its fields (``steps=300``).
    progress : bool

    Returns
    -------
    TunedLens
        With ``meta["train_loss"]`` (mean KL over the last 10% of steps) and ``meta["tokens_seen"]``.
    """
    cfg = (cfg or TunedLensConfig()).replace(**overrides) if overrides else (cfg or TunedLensConfig())
    lens = TunedLens.for_model(model, cfg)
    torch.manual_seed(cfg.seed)
    if store is not None:
        batches = _from_store(model, store, cfg)
    else:
        batches = _stream(model, source if source is not None else _default_source(model), cfg)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            lens.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * max(0.0, 1 - s / cfg.steps)
    )
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="tuned lens", file=sys.stderr)
    losses, tokens_seen = [], 0
    try:
        for _step, states in zip(range(cfg.steps), batches):
            states = [s.float().clone() for s in states]  # out of inference mode
            with torch.no_grad():
                target = _readout(model, states[-1]).log_softmax(-1)
            loss = torch.zeros((), device=target.device)
            for i in range(len(states) - 1):
                lp = _readout(model, lens.translate(i, states[i])).log_softmax(-1)
                loss = loss + (target.exp() * (target - lp)).sum(-1).mean()
            if not torch.isfinite(loss):
                raise DataError(f"tuned-lens loss became {loss.item()} (non-finite activations in the data?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item() / (len(states) - 1))
            tokens_seen += states[0].shape[0]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(kl=f"{losses[-1]:.3f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if bar is not None:
            bar.close()
    tail = losses[-max(1, len(losses) // 10) :]
    lens.meta.update(train_loss=sum(tail) / len(tail), tokens_seen=tokens_seen, steps_done=len(losses))
    return lens


def _readout(model: Any, h: Tensor) -> Tensor:
    return model.unembed(model.ln_final(h[:, None, :]))[:, 0].float()


def held_out_tokens(model: Any, source: Any = None, n: int = 16) -> tuple[Tensor, Tensor]:
    """Evaluation tokens and their mask of real tokens: held-out generated documents of the model's own mix for
    the shipped toys (test split, another seed), else the first ``n`` rows of ``source``."""
    from ..data.corpus import Corpus

    if source is None or isinstance(source, Corpus):
        _default_source(model)
        source = toy_corpus(model, seed=4321, split="test")
    enc = next(_batches(model, source, n, seed=0, context=None, loop=False), None)
    if enc is None:
        raise DataError("the evaluation source yielded no tokens")
    return enc.tokens, enc.mask


def compare_lenses(model: Any, prompts: Any, tuned: TunedLens, *, pos: Any = None, mask: Tensor | None = None) -> Any:
    """Per layer (pandas): KL to the final layer, entropy and next-token CE of the logit lens and the tuned lens.

    ``prompts`` may be a ``(tokens, mask)`` pair as :func:`held_out_tokens` returns (statistics over the masked
    positions only)."""
    import pandas as pd

    from .lens import logit_lens

    if isinstance(prompts, tuple) and len(prompts) == 2 and isinstance(prompts[1], Tensor):
        prompts, mask = prompts
    a = logit_lens(model, prompts, pos=pos).summary(mask)
    b = tuned(model, prompts, pos=pos).summary(mask)
    out = pd.DataFrame({"layer": lens_labels(model)})
    for col in ("kl_to_final", "entropy", "next_token_ce"):
        if col in a:
            out[f"{col}_logit"] = a[col].values
            out[f"{col}_tuned"] = b[col].values
    return out
