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

from ..core.errors import DataError
from ..core.hooks import capture, check_tokens, model_device, run_with_hooks
from ..core.prompts import encode as core_encode
from ..core.prompts import prepends_bos

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


def encode(model: Any, prompts: Any, *, what: str = "prompts") -> Prompts:
    """One prompt set from texts, a list of texts, token ids, a ``PromptBatch`` or ``Prompts``.

    Goes through :func:`mechwork.core.encode` (the model's tokenizer and BOS convention, right padding); prompts
    longer than the model's context raise ``DataError``.
    """
    if isinstance(prompts, Prompts):
        check_tokens(model, prompts.tokens, what=what)
        return prompts
    if isinstance(prompts, (list, tuple)) and not prompts:
        raise DataError(f"{what}: empty set of prompts")
    enc = core_encode(model, prompts, what=what)
    return Prompts(enc.tokens, enc.mask)


def check_sets(source: Prompts, target: Prompts, *, equal: bool, method: str) -> None:
    for name, p in (("source", source), ("target", target)):
        if len(p) < MIN_PROMPTS:
            raise DataError(f"{method}: the {name} set has {len(p)} prompts; at least {MIN_PROMPTS} are needed")
    if equal and len(source) != len(target):
        raise DataError(
            f"{method} matches the sorted source and target activations one to one (1-D optimal transport), so it "
            f"needs equal set sizes; got {len(source)} source and {len(target)} target prompts"
        )


def pool(act: Tensor, mask: Tensor, how: str = "mean", *, skip_first: bool = True) -> Tensor:
    """``[n, pos, *shape]`` -> ``[n, *shape]``: mean over real tokens (BOS left out), or the last real token."""
    m = mask.clone().to(act.device)
    if how == "last":
        last = m.long().sum(1) - 1
        return act[torch.arange(act.shape[0], device=act.device), last]
    if skip_first and m.shape[1] > 1:
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
    dev = model_device(model)
    out: dict[str, list[Tensor]] = {s: [] for s in sites}
    skip = prepends_bos(model)
    for lo in range(0, len(prompts), batch_size):
        toks = prompts.tokens[lo : lo + batch_size].to(dev)
        mask = prompts.mask[lo : lo + batch_size]
        acts = capture(model, toks, list(sites), attention_mask=mask.long().to(dev), hooks=fwd_hooks, clone=False)
        for s in sites:
            out[s].append(pool(acts[s].float(), mask, how, skip_first=skip).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def logits(model: Any, prompts: Prompts, hooks: Sequence[tuple[str, Any]] = ()) -> Tensor:
    """Next-token logits ``[n, pos, vocab]`` of right-padded prompts (refuses models without an LM head)."""
    dev = model_device(model)
    return run_with_hooks(
        model, prompts.tokens.to(dev), hooks, return_type="logits", attention_mask=prompts.mask.long().to(dev)
    )


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


GENDER_NAMES = {"female": 0, "male": 1}
CONCEPTS = {"style": tuple(STYLE_NAMES), "gender": tuple(GENDER_NAMES)}


def concept_label(concept: str, to: str | int) -> int:
    """The class index of ``to`` for ``concept`` (style: negative 0 / positive 1; gender: female 0 / male 1)."""
    if concept not in CONCEPTS:
        raise DataError(f"unknown concept {concept!r}; the generated language's concepts are {sorted(CONCEPTS)}")
    names = STYLE_NAMES if concept == "style" else GENDER_NAMES
    if isinstance(to, int) and to in (0, 1):
        return to
    if to not in names:
        raise DataError(f"{concept} target must be one of {sorted(names)}, got {to!r}")
    return names[str(to)]


def gender_texts(n: int, *, gender: int, seed: int) -> list[str]:
    """``n`` sentences whose name (and so every pronoun) has the given gender (0 female, 1 male)."""
    from ..data import vocab as V
    from ..data.grammar import gender_doc

    rng = random.Random(zlib.crc32(f"steering/gender/{gender}/{seed}".encode()))
    names = V.FEMALE_NAMES if gender == 0 else V.MALE_NAMES
    return [" ".join(gender_doc(rng, name=rng.choice(names)).words) for _ in range(n)]


def concept_sets(
    concept: str = "style", to: str = "positive", n: int = 32, *, seed: int = 0, source: str = "opposite"
) -> tuple[list[str], list[str]]:
    """Source and target texts for a concept of the generated language.

    ``style``: target = ``n`` stories in style ``to`` (``positive``/``negative``); source = ``n`` stories in the
    other style (``source="opposite"``, as toxic vs non-toxic sentences in LinEAS) or in either style
    (``"mixed"``: the model's own distribution, from which generations are about half in each style).
    ``gender``: target = ``n`` sentences about a name of gender ``to`` (``female``/``male``), source = sentences
    about names of the other gender.
    """
    label = concept_label(concept, to)
    if source not in ("opposite", "mixed"):
        raise DataError(f"source must be 'opposite' or 'mixed', got {source!r}")
    if concept == "gender":
        if source == "mixed":
            src = gender_texts(n - n // 2, gender=0, seed=seed) + gender_texts(n // 2, gender=1, seed=seed)
        else:
            src = gender_texts(n, gender=1 - label, seed=seed)
        return src, gender_texts(n, gender=label, seed=seed + 7919)
    src = style_texts(n, style=1 - label if source == "opposite" else None, seed=seed)
    return src, style_texts(n, style=label, seed=seed + 7919)
