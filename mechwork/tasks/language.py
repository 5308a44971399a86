"""The four tasks over the generated language: ``ioi``, ``induction``, ``gender`` and ``style``."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import DataError
from ..data import grammar as G
from ..data import vocab as V
from ..data.tokenizer import encode_words
from .base import PromptBatch, Task, gather_last


def _field(batch: PromptBatch, name: str) -> Tensor:
    """A tensor the metric needs (``labels``, ``loss_mask``, ``targets``): a clear error when the batch lacks it."""
    value = getattr(batch, name)
    if value is None:
        raise DataError(f"the {batch.task!r} metric needs batch.{name}, which this batch does not have")
    return value


@dataclass
class IOI(Task):
    """Indirect object identification: "When Mary and John went to the store , John gave a drink to" -> Mary.

    ``split="test"`` (the default) draws name pairs never seen together in training. Corruption ``"abc"``
    replaces the second subject mention by a third name (the answer is then undetermined); ``"s2_io"``
    replaces it by the indirect object (the answer flips). Metric: logit(IO) - logit(S).
    """

    name: str = "ioi"
    description: str = "indirect object identification; metric logit(IO) - logit(S)"
    corruption: str = "abc"
    template: int | None = None

    def _items(self, rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
        if self.corruption not in ("abc", "s2_io"):
            raise DataError(f"IOI corruption must be 'abc' or 's2_io', got {self.corruption!r}")
        out = []
        for _ in range(n):
            d = G.ioi_doc(rng, split=split, template=self.template)
            clean = d.words[:-2]
            s2 = d.tags.index("ioi:S2")
            io, s = d.factors["io"], d.factors["s"]
            if self.corruption == "abc":
                other = rng.choice([x for x in V.NAMES if x not in (io, s)])
            else:
                other = io
            corrupted = clean[:s2] + [other] + clean[s2 + 1 :]
            out.append({"clean": clean, "corrupted": corrupted, "answer": io, "wrong": s, "info": d.factors})
        return out


@dataclass
class GenderAgreement(Task):
    """Pronoun agreement: "Mary went to the park because" -> she. Labels: 0 female, 1 male.

    Corruption: the name is replaced by a name of the other gender (the correct pronoun flips).
    Metric: logit(correct pronoun) - logit(other pronoun). Accuracy: the correct pronoun wins (chance 0.5).
    """

    name: str = "gender"
    description: str = "pronoun agreement with the name's gender; metric logit(correct) - logit(other pronoun)"
    template: int | None = None

    def _items(self, rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            d = G.gender_doc(rng, template=self.template)
            k = d.tags.index("gender:pronoun")
            clean = d.words[:k]
            g = d.factors["gender"]
            other = rng.choice(V.MALE_NAMES if g == 0 else V.FEMALE_NAMES)
            corrupted = [other] + clean[1:]
            out.append(
                {
                    "clean": clean,
                    "corrupted": corrupted,
                    "answer": V.PRONOUNS[g],
                    "wrong": V.PRONOUNS[1 - g],
                    "label": g,
                    "info": d.factors,
                }
            )
        return out

    def accuracy(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        last = gather_last(logits, batch)
        a = last.gather(1, batch.answer.to(last.device)[:, None])
        w = last.gather(1, batch.wrong.to(last.device)[:, None])
        return (a > w).float().squeeze(1)


_ANTONYM = {
    **dict(zip(V.POSITIVE_ADJ, V.NEGATIVE_ADJ)),
    **dict(zip(V.NEGATIVE_ADJ, V.POSITIVE_ADJ)),
    **dict(zip(V.POSITIVE_VERB, V.NEGATIVE_VERB)),
    **dict(zip(V.NEGATIVE_VERB, V.POSITIVE_VERB)),
}


@dataclass
class Style(Task):
    """Style continuation: "the day began . it was a lovely day . the park was" -> a positive adjective.

    Labels: 1 positive, 0 negative. Corruption: every style word replaced by its antonym. Metric: the style
    logit difference ``logsumexp(logits[own-style adjectives]) - logsumexp(logits[other-style adjectives])``.
    """

    name: str = "style"
    description: str = "style continuation; metric logsumexp(own-style adjectives) - logsumexp(other-style adjectives)"

    def _items(self, rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            style = rng.randrange(2)
            slots = G._style_slots(rng, style)
            ctx = rng.choice(G.STYLE_PROMPT_CONTEXTS)
            head = rng.choice(G.STYLE_PROMPT_HEADS)
            words = G.STYLE_OPENER.split()
            for part in (ctx, head):
                w, _ = G._fill(part, {k: list(v) for k, v in slots.items()}, {}, "style")
                words += w
            corrupted = [_ANTONYM.get(w, w) for w in words]
            adj = rng.choice(V.POSITIVE_ADJ if style == 1 else V.NEGATIVE_ADJ)
            out.append(
                {
                    "clean": words,
                    "corrupted": corrupted,
                    "answer": adj,
                    "wrong": _ANTONYM[adj],
                    "label": style,
                    "info": {"style": style},
                }
            )
        return out

    def lexicons(self) -> dict[str, tuple[str, list[str]]]:
        """The two adjective lexicons the metric compares, with a context in which each word is rendered."""
        return {"positive_ids": ("it was", list(V.POSITIVE_ADJ)), "negative_ids": ("it was", list(V.NEGATIVE_ADJ))}

    def metric(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        last = gather_last(logits, batch).float()
        if "positive_ids" in batch.constants:  # rendered for another tokenizer: its single-token adjectives
            pos_ids = batch.constants["positive_ids"].to(last.device)
            neg_ids = batch.constants["negative_ids"].to(last.device)
        else:
            pos_ids = torch.tensor(encode_words(V.POSITIVE_ADJ, bos=False), device=last.device)
            neg_ids = torch.tensor(encode_words(V.NEGATIVE_ADJ, bos=False), device=last.device)
        diff = last[:, pos_ids].logsumexp(-1) - last[:, neg_ids].logsumexp(-1)
        sign = _field(batch, "labels").to(last.device).float() * 2 - 1
        return diff * sign

    def accuracy(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return (self.metric(logits, batch) > 0).float()


@dataclass
class Induction(Task):
    """Induction on repeated random segments: ``<bos> prefix seg seg[:-1]`` -> ``seg[-1]``.

    ``prefix_len`` and ``segment_len`` are fixed within a batch (drawn from the seed when None) so positions
    align across prompts. Corruption: the first copy replaced by other random tokens. Metric: mean log-prob
    of the correct next token over the second copy (``loss_mask``/``targets``); accuracy likewise (top-1).
    """

    name: str = "induction"
    description: str = "repeated random segments; metric mean log-prob of the second copy's next tokens"
    prefix_len: int | None = None
    segment_len: int | None = None

    def _items(self, rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
        p = rng.randint(*G.INDUCTION_PREFIX) if self.prefix_len is None else self.prefix_len
        L = rng.randint(*G.INDUCTION_SEGMENT) if self.segment_len is None else self.segment_len
        if L < 2:
            raise DataError("segment_len must be at least 2")
        pool = V.INDUCTION_POOL
        out = []
        for _ in range(n):
            d = G.induction_doc(rng, prefix_len=p, segment_len=L, suffix_len=0)
            prefix, seg = d.words[:p], d.words[p : p + L]
            fresh = [rng.choice([w for w in pool if w != s]) for s in seg]
            clean = prefix + seg + seg[:-1]
            corrupted = prefix + fresh + seg[:-1]
            wrong = rng.choice([w for w in pool if w != seg[-1]])
            out.append(
                {
                    "clean": clean,
                    "corrupted": corrupted,
                    "answer": seg[-1],
                    "wrong": wrong,
                    "info": {"prefix_len": p, "segment_len": L},
                    "_seg": seg,
                }
            )
        return out

    def _extra(self, items: list[dict[str, Any]], clean: Tensor) -> dict[str, Any]:
        n, width = clean.shape
        mask = torch.zeros((n, width), dtype=torch.bool)
        targets = torch.zeros((n, width), dtype=torch.long)
        for i, it in enumerate(items):
            p, L = it["info"]["prefix_len"], it["info"]["segment_len"]
            seg_ids = torch.tensor(encode_words(it["_seg"], bos=False))
            start = 1 + p + L  # position of the first token of the second copy
            mask[i, start : start + L - 1] = True
            targets[i, start : start + L - 1] = seg_ids[1:]
        return {"loss_mask": mask, "targets": targets}

    def _scored(self, logits: Tensor, batch: PromptBatch) -> tuple[Tensor, Tensor]:
        mask = _field(batch, "loss_mask").to(logits.device)
        logp = (
            logits.float().log_softmax(-1).gather(-1, _field(batch, "targets").to(logits.device)[..., None]).squeeze(-1)
        )
        return logp, mask

    def metric(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        logp, mask = self._scored(logits, batch)
        return (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def accuracy(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        _, mask = self._scored(logits, batch)
        hit = (logits.argmax(-1) == _field(batch, "targets").to(logits.device)) & mask
        return hit.sum(-1).float() / mask.sum(-1).clamp(min=1)
