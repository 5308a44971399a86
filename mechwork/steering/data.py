"""Prompt sets for steering: encoding (texts, token tensors, task batches), concept sets, pooled activations."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..core.errors import DataError, MechworkError
from ..core.hooks import check_tokens, model_device, to_tokens
from ..core.sites import resolve, stop_at_layer

MIN_PROMPTS = 4


@dataclass
class Prompts:
    """Right-padded tokens and the mask of real tokens (``True``), one row per prompt."""

    tokens: Int[Tensor, "n pos"]
    mask: Bool[Tensor, "n pos"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, idx: Sequence[int] | Tensor) -> Prompts:
        i = torch.as_tensor(idx, dtype=torch.long)
        return Prompts(self.tokens[i], self.mask[i])

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1)


def require_lm(model: Any, what: str) -> None:
    """Refuse a model without a language-model head (the MiniLM encoder) where ``what`` needs logits."""
    cfg = model.cfg
    arch = str(getattr(cfg, "original_architecture", "") or getattr(cfg, "architecture", "") or "")
    spec = str(getattr(model, "mechwork_spec", "") or "").lower()
    if (
        getattr(model, "mechwork_lm_head", True) is False
        or getattr(cfg, "is_encoder", False)
        or "Bert" in arch
        or "minilm" in spec
        or not getattr(cfg, "d_vocab", 0)
    ):
        raise MechworkError(
            f"{what} needs next-token logits, and {spec or arch or 'this model'} is an encoder without a "
            "language-model head (its logits would be meaningless). Steer a causal language model; on an encoder "
            "fit DiffMeans/LinearAcT on its activations and read the effect on pooled embeddings instead."
        )


def encode(model: Any, prompts: Any, *, what: str = "prompts") -> Prompts:
    """One prompt set from texts, a list of texts, a token tensor ``[n, pos]``, a ``PromptBatch`` or ``Prompts``.

    Texts are tokenised one by one (BOS prepended) and right-padded; prompts longer than the model's context
    raise ``DataError``.
    """
    if isinstance(prompts, Prompts):
        check_tokens(model, prompts.tokens, what=what)
        return prompts
    if hasattr(prompts, "clean") and hasattr(prompts, "pos"):  # a task's PromptBatch
        toks = check_tokens(model, prompts.clean, what=what)
        mask = torch.arange(toks.shape[1])[None] <= prompts.pos[:, None].cpu()
        return Prompts(toks, mask)
    if isinstance(prompts, Tensor):
        toks = check_tokens(model, prompts, what=what)
        return Prompts(toks, torch.ones_like(toks, dtype=torch.bool))
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = list(prompts)
    if not texts:
        raise DataError(f"{what}: empty set of prompts")
    if not all(isinstance(t, str) for t in texts):
        raise DataError(f"{what} must be texts, a token tensor or a task's PromptBatch; got {type(texts[0]).__name__}")
    rows = [to_tokens(model, t)[0] for t in texts]
    width = max(len(r) for r in rows)
    pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
    toks = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = r
        mask[i, : len(r)] = True
    return Prompts(toks, mask)


def check_sets(source: Prompts, target: Prompts, *, equal: bool, method: str) -> None:
    for name, p in (("source", source), ("target", target)):
        if len(p) < MIN_PROMPTS:
            raise DataError(f"{method}: the {name} set has {len(p)} prompts; at least {MIN_PROMPTS} are needed")
    if equal and len(source) != len(target):
        raise DataError(
            f"{method} matches the sorted source and target activations one to one (1-D optimal transport), so it "
            f"needs equal set sizes; got {len(source)} source and {len(target)} target prompts"
        )


def pool(act: Tensor, mask: Tensor, how: str = "mean") -> Tensor:
    """``[n, pos, *shape]`` -> ``[n, *shape]``: mean over real tokens after BOS, or the last real token."""
    m = mask.clone().to(act.device)
    if how == "last":
        last = m.long().sum(1) - 1
        return act[torch.arange(act.shape[0], device=act.device), last]
    if m.shape[1] > 1:
        m[:, 0] = False  # BOS: the same activation in every prompt
        m[m.sum(1) == 0, 0] = True
    w = m.to(act.dtype).reshape(*m.shape, *([1] * (act.ndim - 2)))
    return (act * w).sum(1) / w.sum(1).clamp_min(1)


def pooled(
    model: Any,
    prompts: Prompts,
    sites: Sequence[str],
    *,
    how: str = "mean",
    fwd_hooks: Sequence[tuple[str, Any]] = (),
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Pooled activations per site ``[n, *shape]`` (no gradient), with optional extra hooks active."""
    site_list = resolve(model, list(sites))
    dev = model_device(model)
    out: dict[str, list[Tensor]] = {s.name: [] for s in site_list}
    stop = stop_at_layer(model, site_list)
    for lo in range(0, len(prompts), batch_size):
        toks = prompts.tokens[lo : lo + batch_size].to(dev)
        mask = prompts.mask[lo : lo + batch_size]
        store: dict[str, Tensor] = {}

        def grab(name: str, store: dict[str, Tensor] = store) -> Any:
            def fn(t: Tensor, hook: Any = None) -> None:
                store[name] = t.detach()

            return fn

        hooks = list(fwd_hooks) + [(s.name, grab(s.name)) for s in site_list]
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            forward(model, toks, mask, stop_at_layer=stop)
        for s in site_list:
            out[s.name].append(pool(store[s.name].float(), mask, how).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def forward(model: Any, tokens: Tensor, mask: Tensor | None = None, *, stop_at_layer: int | None = None) -> Any:
    """One forward pass (logits, or none with ``stop_at_layer``); the attention mask is passed only with padding."""
    kw: dict[str, Any] = {}
    if mask is not None and not bool(mask.all()):
        kw["attention_mask"] = mask.long().to(tokens.device)
    if stop_at_layer is not None:
        return model(tokens, stop_at_layer=stop_at_layer, **kw)
    return model(tokens, **kw)


# --- the style concept of the generated language -------------------------------------------------------------
STYLE_NAMES = {"positive": 1, "negative": 0}


def style_label(to: str | int) -> int:
    if isinstance(to, int) and to in (0, 1):
        return to
    if to not in STYLE_NAMES:
        raise DataError(f"style target must be 'positive' or 'negative', got {to!r}")
    return STYLE_NAMES[to]


def style_texts(n: int, *, style: int | None, seed: int, split: str = "train") -> list[str]:
    """``n`` stories of the generated language (opener + 2-4 sentences), in one style or mixed (``None``)."""
    from ..data.grammar import style_doc

    rng = random.Random(zlib.crc32(f"steering/style/{split}/{style}/{seed}".encode()))
    return [" ".join(style_doc(rng, style=style).words) for _ in range(n)]


def neutral_texts(n: int, *, seed: int = 0) -> list[str]:
    """Held-out text without style words (IOI, gender and induction documents) for fluency costs."""
    from ..data.grammar import GENERATORS

    rng = random.Random(zlib.crc32(f"steering/neutral/{seed}".encode()))
    kinds = ("ioi", "gender", "induction")
    return [" ".join(GENERATORS[kinds[i % 3]](rng).words) for i in range(n)]


def concept_sets(
    concept: str = "style", to: str = "positive", n: int = 32, *, seed: int = 0, source: str = "opposite"
) -> tuple[list[str], list[str]]:
    """Source and target texts for a concept of the generated language.

    ``style``: target = ``n`` stories in style ``to``; source = ``n`` stories in the other style
    (``source="opposite"``, as toxic vs non-toxic sentences in LinEAS) or in either style (``"mixed"``: the
    model's own distribution, from which generations are about half in each style).
    """
    if concept != "style":
        raise DataError(f"unknown concept {concept!r}; the generated language's steering concept is 'style'")
    label = style_label(to)
    if source not in ("opposite", "mixed"):
        raise DataError(f"source must be 'opposite' or 'mixed', got {source!r}")
    src = style_texts(n, style=1 - label if source == "opposite" else None, seed=seed)
    return src, style_texts(n, style=label, seed=seed + 7919)
