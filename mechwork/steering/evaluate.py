"""Judging a steerer: behaviour (style of generations), fluency cost (KL, ΔCE) and side effects (IOI, induction)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.hooks import model_device, run_with_hooks
from ..core.kind import require_logits
from ..core.prompts import decode
from .data import concept_label, encode, logits, neutral_texts, style_label
from .generate import generate
from .steerer import Steerer

OPENER = "the day began ."


def style_words() -> dict[int, frozenset[str]]:
    from ..data import vocab as V

    return dict(V.STYLE_WORDS)


def style_rate(
    model: Any,
    steerer: Steerer | None = None,
    *,
    strength: float | None = None,
    to: str = "positive",
    n: int = 64,
    max_new_tokens: int = 24,
    seed: int = 0,
    prompt: str = OPENER,
    use_cache: bool = True,
) -> dict[str, float]:
    """Style of ``n`` sampled continuations of the neutral opener, read off the two lexicons exactly.

    Returns ``rate`` (share of styled generations whose style words are mostly in style ``to``; about 0.5
    unsteered on ``toy-mixed``), ``word_rate`` (share of all style words in style ``to``) and ``styled`` (share
    of generations with any style word). Words are the decoded text split on whitespace, so any tokenizer works.
    """
    label = style_label(to)
    rows = generate(
        model,
        [prompt] * n,
        steerer=steerer,
        strength=strength,
        max_new_tokens=max_new_tokens,
        seed=seed,
        use_cache=use_cache,
    )
    lex = style_words()
    styled = hits = own = total = 0
    for row in rows:
        words = decode(model, row).split()
        p = sum(w in lex[label] for w in words)
        q = sum(w in lex[1 - label] for w in words)
        own, total = own + p, total + p + q
        if p + q:
            styled += 1
            hits += p > q
    return {"rate": hits / max(styled, 1), "word_rate": own / max(total, 1), "styled": styled / n}


@torch.inference_mode()
def fluency(
    model: Any, steerer: Steerer | None, *, strength: float | None = None, n: int = 64, seed: int = 0, texts: Any = None
) -> dict[str, float]:
    """KL(unsteered ‖ steered) of the next-token distributions and the cross-entropy increase on neutral text.

    Held-out text of the generated language without style words (IOI, gender and induction documents) unless
    ``texts`` is given. The steerer edits every position here (``positions="all"``): the cost per steered token.
    """
    require_logits(model, "the fluency cost (KL, cross-entropy)")
    p = encode(model, texts if texts is not None else neutral_texts(n, seed=seed), what="fluency texts")
    dev = model_device(model)
    toks, mask = p.tokens.to(dev), p.mask.to(dev)
    base = logits(model, p).float().log_softmax(-1)
    if steerer is None:
        steered = base
    else:
        steered = logits(model, p, steerer.hooks(model, strength=strength, positions="all")).float().log_softmax(-1)
    m = mask[:, :-1]
    kl = (base.exp() * (base - steered)).sum(-1)[:, :-1]
    nxt = toks[:, 1:, None]
    ce_b = -base[:, :-1].gather(-1, nxt).squeeze(-1)
    ce_s = -steered[:, :-1].gather(-1, nxt).squeeze(-1)
    return {
        "kl": float(kl[m].mean()),
        "ce": float(ce_s[m].mean()),
        "ce_base": float(ce_b[m].mean()),
        "delta_ce": float((ce_s - ce_b)[m].mean()),
    }


@torch.inference_mode()
def gender_rate(
    model: Any,
    steerer: Steerer | None = None,
    *,
    strength: float | None = None,
    to: str = "female",
    n: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Pronoun agreement flipped: on gender-task prompts ("Mary went to the park because" -> she/he), the share
    of prompts whose name has the other gender but whose predicted pronoun is ``to``'s (``rate``; 0 unsteered on
    ``toy-mixed``), and the share of ``to``-gender prompts that keep their pronoun (``kept``)."""
    from ..tasks import get

    label = concept_label("gender", to)
    task = get("gender")
    b = task.prompts(n, seed=seed, split="test", model=model).to(model_device(model))
    hooks = steerer.hooks(model, strength=strength, positions="all") if steerer is not None else []
    lg = run_with_hooks(model, b.clean, hooks, return_type="logits", attention_mask=b.attention_mask)
    correct = task.accuracy(lg, b).bool().cpu()  # the name's own pronoun wins
    assert b.labels is not None
    says = torch.where(correct, b.labels.cpu(), 1 - b.labels.cpu())  # gender of the predicted pronoun
    other, same = b.labels.cpu() != label, b.labels.cpu() == label
    return {
        "rate": float((says[other] == label).float().mean()) if other.any() else 0.0,
        "kept": float((says[same] == label).float().mean()) if same.any() else 0.0,
    }


@torch.inference_mode()
def side_effects(
    model: Any, steerer: Steerer | None, *, strength: float | None = None, n: int = 128
) -> dict[str, float]:
    """IOI logit difference / accuracy and induction loss on the second copy, with the steerer applied.

    The task prompts are rendered through the model's tokenizer; a task the tokenizer cannot express (IOI with
    multi-token names) is left out of the returned dict.
    """
    from ..core.errors import UnsupportedModelError
    from ..tasks import get

    dev = model_device(model)
    out: dict[str, float] = {}
    hooks = steerer.hooks(model, strength=strength, positions="all") if steerer is not None else []
    ioi, ind = get("ioi"), get("induction")
    try:
        b = ioi.prompts(n, seed=11, split="test", model=model).to(dev)
    except UnsupportedModelError:
        b = None
    if b is not None:
        lg = run_with_hooks(model, b.clean, hooks, return_type="logits", attention_mask=b.attention_mask)
        out["ioi_logit_diff"] = float(ioi.metric(lg, b).mean())
        out["ioi_accuracy"] = float(ioi.accuracy(lg, b).mean())
    try:
        bi = ind.prompts(n // 2, seed=12, split="test", model=model).to(dev)
    except UnsupportedModelError:
        return out
    li = run_with_hooks(model, bi.clean, hooks, return_type="logits", attention_mask=bi.attention_mask)
    out["induction_loss"] = -float(ind.metric(li, bi).mean())  # the metric is the mean log-prob of the 2nd copy
    return out


def evaluate(
    model: Any,
    steerer: Steerer | None,
    *,
    strength: float | None = None,
    to: str | None = None,
    concept: str | None = None,
    n: int = 64,
    n_text: int = 64,
    max_new_tokens: int = 24,
    seed: int = 0,
    side: bool = True,
) -> dict[str, float]:
    """Behaviour, fluency cost and side effects of ``steerer`` at ``strength`` in one flat dict.

    ``concept`` and ``to`` default to the steerer's (``style`` / ``positive`` when unknown). Behaviour ``rate``:
    for style the share of generations from the neutral opener in style ``to`` (:func:`style_rate`), for gender
    the share of other-gender prompts whose pronoun flips to ``to`` (:func:`gender_rate`). With
    ``steerer=None`` the unsteered baseline.
    """
    concept = concept or (steerer.config.concept if steerer is not None and steerer.config.concept else "style")
    default_to = "positive" if concept == "style" else "female"
    to = to or (steerer.config.target if steerer is not None and steerer.config.target else default_to)
    out: dict[str, float] = {}
    if steerer is not None:
        out["strength"] = steerer.check_strength(strength)
    if concept == "gender":
        out.update(gender_rate(model, steerer, strength=strength, to=to, n=max(n, 64), seed=seed))
    else:
        kw: dict[str, Any] = dict(strength=strength, to=to, n=n, max_new_tokens=max_new_tokens, seed=seed)
        out.update(style_rate(model, steerer, **kw))
    out.update(fluency(model, steerer, strength=strength, n=n_text, seed=seed))
    if side:
        out.update(side_effects(model, steerer, strength=strength))
    return out
