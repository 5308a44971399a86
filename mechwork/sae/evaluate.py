"""Evaluation of an SAE: reconstruction, sparsity and what splicing it into the model costs.

``evaluate(sae, model, source, site)`` runs the model on tokens (by default held-out text of the generated
language) and reports, over the positions whose next-token loss counts:

* reconstruction: FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (float64 accumulators over all batches),
  explained variance = 1 - FVU, MSE (sum over d, mean over tokens), cosine, l2 ratio, relative
  reconstruction bias E||x_hat||^2 / E<x, x_hat> (Gated-SAE paper eq. 10);
* sparsity: L0, dead fraction (latents that never fire on these tokens), dense fraction (fire on more than
  ``dense_threshold`` of tokens), a histogram of log10 firing frequencies;
* model behaviour: next-token CE clean / with the SAE spliced in / with the site zero-ablated / mean-ablated,
  CE-loss recovered = (CE_abl - CE_sae) / (CE_abl - CE_clean) for both ablations, and KL(clean || spliced),
  KL(clean || zero-ablated) per token.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DataError, ShapeError, SiteError
from ..core.hooks import capture, check_tokens, hooked, model_device, n_ctx
from ..core.kind import is_causal, model_kind
from ..core.sites import Site
from ..core.sites import site as resolve_site
from .model import SAE


def _site_for(model: Any, sae: SAE, site: str | None, strict: bool) -> Site:
    name = site or sae.site
    if name is None:
        raise SiteError("the SAE does not record its site; pass site= (e.g. 'resid_post.2')")
    s = resolve_site(model, name)
    if s.d is None:
        raise SiteError(
            f"site {s.name} has no fixed per-token shape; SAEs splice into residual, MLP or attention-output sites"
        )
    if s.d != sae.d_in:
        raise ShapeError(f"the SAE has d_in={sae.d_in} but site {s.name} has per-token shape {s.shape} (width {s.d})")
    own = _own_site(model, sae.site)
    if strict and own is not None and own != s.name:
        raise SiteError(
            f"the SAE was trained on {sae.site} but is being spliced at {s.name}; pass strict=False to do it anyway"
        )
    trained_on, spec = sae.meta.get("model"), getattr(model, "mechwork_spec", None)
    if strict and trained_on and spec and str(trained_on) != str(spec):
        warnings.warn(f"the SAE was trained on activations of {trained_on!r}, the model is {spec!r}", stacklevel=3)
    return s


def _own_site(model: Any, name: str | None) -> str | None:
    """The model's name for the SAE's recorded site (``None`` if unrecorded or foreign to this model)."""
    if not name:
        return None
    try:
        return resolve_site(model, name).name
    except SiteError:
        return None


def _replace(sae: SAE, act: Tensor, *, k: int | None, error: bool) -> Tensor:
    b, p = act.shape[:2]
    x = act.reshape(b * p, -1).to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
    out = sae(x) if k is None else sae.decode(sae.encode(x, k=k))
    out = out.reshape(b * p, -1)
    if error:
        out = out + (x - out).detach()
    return out.reshape(act.shape).to(device=act.device, dtype=act.dtype)


@contextlib.contextmanager
def splice(
    model: Any, sae: SAE, site: str | None = None, *, k: int | None = None, error: bool = False, strict: bool = True
) -> Iterator[Any]:
    """Replace the activation at ``site`` by the SAE's reconstruction while the block runs.

    Parameters
    ----------
    site : str, optional
        Site name (default: the site the SAE was trained on).
    k : int, optional
        TopK SAEs: latents kept (default ``round(alpha * k)``).
    error : bool
        Add the (detached) reconstruction error back: the forward pass is unchanged but gradients flow
        through the SAE (for attribution through latents).
    strict : bool
        Refuse a site other than the one the SAE was trained on.

    Raises
    ------
    ShapeError
        The site's width differs from the SAE's ``d_in``.
    SiteError
        Unknown site, or another site than the SAE's own with ``strict=True``.
    """
    s = _site_for(model, sae, site, strict)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        return _replace(sae, act, k=k, error=error)

    with hooked(model, [(s.name, hook)]):
        yield model


def token_batches(
    model: Any, source: Any, *, n_tokens: int, batch_size: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor, list[Any] | None]]:
    """``(tokens [b, pos], loss mask [b, pos], docs or None)`` batches from a source, ``n_tokens`` masked tokens in all.

    Sources: ``None`` (held-out generated text, ``Corpus(seed, split="test")``), a ``Corpus``, a token
    tensor ``[b, pos]`` or ``(tokens, mask)``, a list of strings, or an ActivationStore (its windows).
    """
    from ..core.prompts import vocab_id

    if (source is None or type(source).__name__ == "Corpus") and vocab_id(model) != "mechwork-toy":
        from ..data import Corpus

        source = Corpus(seed, split="test") if source is None else source
        yield from _rows_batches(model, source, n_tokens=n_tokens, batch_size=batch_size, seed=seed)
        return
    if source is None or type(source).__name__ == "Corpus":
        from ..data import Corpus, docs_to_batch

        corpus = Corpus(seed, split="test") if source is None else source
        have = 0
        while have < n_tokens:
            docs = corpus.docs(batch_size)
            tokens, mask = docs_to_batch(docs, n_ctx(model))
            have += int(mask.sum())
            yield tokens, mask, docs
        return
    if hasattr(source, "window") and hasattr(source, "context"):  # ActivationStore: whole windows
        ctx = int(source.context)
        n_win = min(max(1, math.ceil(n_tokens / max(1, ctx - 1))), source.n_tokens // ctx)
        if n_win < 1:
            raise DataError("the activation store holds less than one context window")
        toks = source.tokens[: n_win * ctx].reshape(n_win, ctx)
        mask = torch.ones_like(toks, dtype=torch.bool)
        mask[:, -1] = False
        for i in range(0, n_win, batch_size):
            yield toks[i : i + batch_size], mask[i : i + batch_size], None
        return
    if (
        isinstance(source, (str, Path))
        or (isinstance(source, (list, tuple)) and source and all(isinstance(t, str) for t in source))
        or hasattr(source, "prompts")
    ):
        yield from _rows_batches(model, source, n_tokens=n_tokens, batch_size=batch_size, seed=seed)
        return
    if isinstance(source, Tensor):
        source = (
            source,
            torch.ones_like(source, dtype=torch.bool).index_fill_(-1, torch.tensor([source.shape[-1] - 1]), False),
        )
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Tensor):
        tokens = check_tokens(model, source[0])
        mask = torch.as_tensor(source[1], dtype=torch.bool).reshape(tokens.shape)
        for i in range(0, tokens.shape[0], batch_size):
            yield tokens[i : i + batch_size], mask[i : i + batch_size], None
        return
    raise DataError(
        f"cannot evaluate on a {type(source).__name__}: pass a Corpus, token ids [batch, pos], (tokens, mask), "
        "a list of texts, a text/JSONL file, a task or an ActivationStore"
    )


def _rows_batches(
    model: Any, source: Any, *, n_tokens: int, batch_size: int, seed: int
) -> Iterator[tuple[Tensor, Tensor, None]]:
    """Batches of documents from any token source, one per padded row; the mask marks the positions whose next
    token is real (causal models) or the real tokens (encoders)."""
    from ..core.prompts import pad_rows
    from ..data.sources import model_rows, token_source

    rows = model_rows(model, lambda: token_source(model, source, seed=seed), what="the evaluation source")
    have = 0
    while have < n_tokens:
        group = [r for _, r in zip(range(batch_size), rows)]
        if not group:
            return
        enc = pad_rows(model, group, last_offset=0)
        mask = enc.mask.clone()
        if is_causal(model):  # the last token predicts nothing here (encoders: every real token counts)
            mask[torch.arange(len(group)), enc.last] = False
        have += int(mask.sum())
        yield enc.tokens, mask, None


class _Acc:
    """float64 accumulators of reconstruction and sparsity statistics."""

    def __init__(self, d: int, m: int) -> None:
        self.n = 0
        self.sx = torch.zeros(d, dtype=torch.float64)
        self.sxx = self.err = self.xhat2 = self.dot = self.cos = self.l0 = self.ratio = 0.0
        self.fired = torch.zeros(m, dtype=torch.float64)

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sxx += float(x.pow(2).sum())
        self.err += float((x - x_hat).pow(2).sum())
        self.xhat2 += float(x_hat.pow(2).sum())
        self.dot += float((x * x_hat).sum())
        self.cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
        self.ratio += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum())
        active = (f != 0).cpu()
        self.l0 += float(active.sum())
        self.fired += active.sum(0).double()

    def metrics(self, dense_threshold: float) -> dict[str, Any]:
        if self.n == 0:
            raise DataError("no tokens to evaluate on (empty source or empty mask)")
        total = self.sxx - float(self.sx.pow(2).sum()) / self.n
        freq = self.fired / self.n
        fvu = self.err / max(total, 1e-30)
        edges = [-math.inf] + [x / 2 for x in range(-12, 1)]
        logf = torch.log10(freq.clamp_min(1e-12))
        counts = [int(((logf > lo) & (logf <= hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
        counts[0] = int((freq == 0).sum())
        return {
            "n_tokens": self.n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": self.err / self.n,
            "cosine": self.cos / self.n,
            "l2_ratio": self.ratio / self.n,
            "relative_reconstruction_bias": self.xhat2 / self.dot if self.dot else math.nan,
            "l0": self.l0 / self.n,
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > dense_threshold).double().mean()),
            "dense_threshold": dense_threshold,
            "latent_freq_hist": {"log10_freq_upper_edges": ["dead"] + edges[2:], "counts": counts},
            "latent_freq": freq.float(),
        }


def _ce_kl(logits: Tensor, ref_logp: Tensor | None, tokens: Tensor, mask: Tensor) -> tuple[float, float]:
    logp = logits[:, :-1].float().log_softmax(-1)
    m = mask[:, :-1]
    ce = -logp.gather(-1, tokens[:, 1:, None])[..., 0][m].double().sum()
    kl = 0.0 if ref_logp is None else float((ref_logp.exp() * (ref_logp - logp)).sum(-1)[m].double().sum())
    return float(ce), kl


@torch.no_grad()
def evaluate(
    sae: SAE,
    model: Any = None,
    source: Any = None,
    site: str | None = None,
    *,
    n_tokens: int = 16384,
    batch_size: int = 64,
    seed: int = 0,
    k: int | None = None,
    dense_threshold: float = 0.1,
    strict: bool = True,
) -> dict[str, Any]:
    """Evaluate ``sae`` (see the module docstring for the metrics).

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge, optional
        Without a model only reconstruction and sparsity are measured, on ``source`` given as activations
        (a tensor ``[n, d]`` or an ActivationStore with ``site``).
    source : optional
        Tokens to run (see :func:`token_batches`); default: held-out generated text.
    site : str, optional
        Default: the SAE's own site.
    n_tokens : int
        Tokens (loss-mask positions) to evaluate on.
    k : int, optional
        TopK SAEs: latents kept (e.g. ``round(alpha * k)``).

    Returns
    -------
    dict
        Floats, plus ``latent_freq`` (Tensor [d_sae]) and ``latent_freq_hist``.
    """
    if model is None:
        return _evaluate_acts(sae, source, site, n_tokens=n_tokens, k=k, dense_threshold=dense_threshold)
    s = _site_for(model, sae, site, strict)
    acc = _Acc(sae.d_in, sae.d_sae)
    if not model_kind(model).lm_head:  # an encoder without an LM head: reconstruction and sparsity only
        for tokens, mask, _ in token_batches(model, source, n_tokens=n_tokens, batch_size=batch_size, seed=seed):
            dev = model_device(model)
            am = None if is_causal(model) else mask.long().to(dev)  # encoders: the mask marks the real tokens
            x = capture(model, tokens.to(dev), [s], attention_mask=am)[s.name]
            flat = x[mask.to(x.device)].reshape(-1, sae.d_in).to(sae.W_dec.device, sae.W_dec.dtype)
            f = sae.encode(flat, k=k)
            acc.add(flat, sae.decode(f).reshape(flat.shape), f)
        out = acc.metrics(dense_threshold)
        out.update(site=s.name, note="the model has no trained LM head: no CE-loss or KL metrics")
        return out
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0}
    kl = {"sae": 0.0, "zero": 0.0}
    n_pred = 0
    dev = model_device(model)
    for tokens, mask, _ in token_batches(model, source, n_tokens=n_tokens, batch_size=batch_size, seed=seed):
        tokens, mask = tokens.to(dev), mask.to(dev)
        clean, acts = capture(model, tokens, [s], output=True, clone=False)
        x = acts[s.name]
        ref = clean[:, :-1].float().log_softmax(-1)
        flat = x[mask].reshape(-1, sae.d_in).to(sae.W_dec.device, sae.W_dec.dtype)
        f = sae.encode(flat, k=k)
        acc.add(flat, sae.decode(f).reshape(flat.shape), f)
        mean_act = x[mask].mean(0)
        runs = {
            "clean": (clean, None),
            "sae": (_run(model, tokens, s, lambda a: _replace(sae, a, k=k, error=False)), ref),
            "zero": (_run(model, tokens, s, torch.zeros_like), ref),
            "mean": (_run(model, tokens, s, lambda a, m=mean_act: m.expand_as(a).clone()), None),
        }
        for name, (logits, r) in runs.items():
            c, kk = _ce_kl(logits, r, tokens, mask)
            ce[name] += c
            if name in kl:
                kl[name] += kk
        n_pred += int(mask[:, :-1].sum())
    out = acc.metrics(dense_threshold)
    ce = {k_: v / n_pred for k_, v in ce.items()}
    out.update({f"ce_{k_}": v for k_, v in ce.items()})
    out.update({"kl_sae": kl["sae"] / n_pred, "kl_zero": kl["zero"] / n_pred})
    out["ce_loss_recovered"] = _recovered(ce["zero"], ce["sae"], ce["clean"])
    out["ce_loss_recovered_mean_ablation"] = _recovered(ce["mean"], ce["sae"], ce["clean"])
    out["kl_div_score"] = (kl["zero"] - kl["sae"]) / kl["zero"] if kl["zero"] else math.nan
    out.update(site=s.name, k=k if k is not None else (sae.cfg.k_infer if sae.activation == "topk" else None))
    return out


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    return (ablated - spliced) / (ablated - clean) if ablated != clean else math.nan


def _run(model: Any, tokens: Tensor, s: Site, fn: Any) -> Tensor:
    with hooked(model, [(s.name, lambda act, hook=None: fn(act))]):
        return model(tokens)


def _evaluate_acts(
    sae: SAE, source: Any, site: str | None, *, n_tokens: int, k: int | None, dense_threshold: float
) -> dict[str, Any]:
    if hasattr(source, "sites") and hasattr(source, "__getitem__") and not isinstance(source, Tensor):
        name = site or sae.site
        if name is None:
            raise SiteError("evaluating on an activation store needs site= (the SAE does not record one)")
        data = source[name]
    elif isinstance(source, Tensor):
        data = source
    else:
        raise DataError("without a model, evaluate() needs activations: a tensor [n, d] or an ActivationStore")
    if data.reshape(data.shape[0], -1).shape[1] != sae.d_in:
        raise ShapeError(
            f"the activations have width {data.reshape(data.shape[0], -1).shape[1]}, the SAE has d_in={sae.d_in}"
        )
    acc = _Acc(sae.d_in, sae.d_sae)
    for i in range(0, min(n_tokens, data.shape[0]), 8192):
        x = data[i : min(i + 8192, n_tokens)].reshape(-1, sae.d_in).to(sae.W_dec.device, sae.W_dec.dtype)
        f = sae.encode(x, k=k)
        acc.add(x, sae.decode(f).reshape(x.shape), f)
    return acc.metrics(dense_threshold)
