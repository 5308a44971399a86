"""Your own prompts as a :class:`PromptBatch`: clean/corrupted pairs for patching, labelled texts for erasure
and probes. Everything goes through the model's tokenizer (:mod:`mechwork.core.prompts`).

>>> batch = mechwork.tasks.from_pairs(model,
...     clean=["When Mary and John went to the store, John gave a drink to"],
...     corrupted=["When Mary and John went to the store, Anne gave a drink to"],
...     answers=[" Mary"], wrong=[" John"])
>>> mechwork.patching.activation_patch(model, batch)             # metric: logit(answer) - logit(wrong)
>>> texts = mechwork.tasks.from_texts(model, ["she is kind", "he is tall"], labels=[0, 1])
>>> mechwork.erasure.fit(model, texts, "resid_pre.1")
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DataError, MechworkWarning, UnsupportedModelError
from ..core.kind import model_kind
from ..core.prompts import Encoded, encode, str_tokens, tokenizer_of, vocab_id
from .batch import PromptBatch, embedding_similarity, logit_diff
from .render import continuation_id

Metric = Callable[[Tensor, Any], Tensor]


def _answer_ids(model: Any, answers: Sequence[Any], enc: Encoded, what: str) -> Tensor:
    """One token id per prompt: ints as given; strings must be one token, as a continuation of the prompt."""
    if len(answers) != len(enc):
        raise DataError(f"{what} has {len(answers)} entries for {len(enc)} prompts")
    tok = tokenizer_of(model)
    out = []
    for i, a in enumerate(answers):
        if isinstance(a, (int, Tensor)) and not isinstance(a, bool):
            out.append(int(a))
            continue
        if not isinstance(a, str):
            raise DataError(f"{what}[{i}] must be a token id or a string, got {type(a).__name__}")
        if tok is None:
            raise DataError(f"{what}[{i}] is a string but the model has no tokenizer; pass token ids")
        ids = tok(a, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            prefix = tok.decode(enc.tokens[i, : int(enc.last[i]) + 1].tolist(), skip_special_tokens=True)
            word = a.strip()
            cont = continuation_id(tok, prefix, word) if word else None
            if cont is None:
                raise DataError(
                    f"{what}[{i}] = {a!r} is {len(ids)} tokens for this tokenizer ({str_tokens(model, ids)}); a "
                    "logit difference needs single tokens (for GPT-2-style tokenizers write the leading space: ' Mary')"
                )
            ids = [cont]
        out.append(int(ids[0]))
    t = torch.tensor(out)
    vocab = int(model.cfg.d_vocab)
    if bool((t < 0).any()) or bool((t >= vocab).any()):
        raise DataError(f"{what} holds ids outside the vocabulary [0, {vocab})")
    return t


def from_pairs(
    model: Any,
    clean: Any,
    corrupted: Any,
    answers: Sequence[Any] | None = None,
    wrong: Sequence[Any] | None = None,
    *,
    metric: Metric | None = None,
    labels: Sequence[int] | Tensor | None = None,
    name: str = "pairs",
) -> PromptBatch:
    """A :class:`PromptBatch` of your own clean/corrupted prompt pairs, for patching and circuits.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    clean, corrupted : list of str, or token ids [batch, pos]
        Pair ``i`` must have the same number of tokens in both (patching compares position by position); the
        error shows both tokenisations otherwise. Pairs may differ in length from each other (right-padded,
        with an attention mask).
    answers, wrong : list of str or int, optional
        The correct and the contrasting next token of each clean prompt (strings must be single tokens for the
        model's tokenizer, e.g. ``" Mary"`` for GPT-2). With them the metric defaults to the logit difference.
    metric : callable, optional
        ``metric(output, batch) -> Float[Tensor, "batch"]``, one value per prompt; ``output`` is the logits
        (or a headless model's last hidden state). Default: logit difference when answers are given; on a
        headless encoder (all-MiniLM-L6-v2) without answers, :func:`embedding_similarity` (cosine of the
        mean-pooled embedding with the clean one).
    labels : list of int, optional
        Class labels per prompt (for erasure and probes).

    Raises
    ------
    DataError
        Mismatched lengths, multi-token answers, empty input.
    UnsupportedModelError
        Answers (a logit metric) on a model without a trained LM head, or no metric possible.
    """
    c = encode(model, clean, what="clean prompts")
    x = encode(model, corrupted, what="corrupted prompts")
    if len(c) != len(x):
        raise DataError(f"{len(c)} clean prompts but {len(x)} corrupted ones; give one corrupted prompt per clean one")
    lc, lx = c.mask.sum(-1), x.mask.sum(-1)
    bad = (lc != lx).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise DataError(
            f"pair {i} has {int(lc[i])} clean tokens but {int(lx[i])} corrupted ones "
            f"({str_tokens(model, c.tokens[i, : int(lc[i])])} vs {str_tokens(model, x.tokens[i, : int(lx[i])])}); "
            f"patching needs position-aligned pairs ({len(bad)} of {len(c)} pairs differ). Choose corruptions that "
            "tokenise to the same length (e.g. swap a name for another single-token name)"
        )
    width = max(c.tokens.shape[1], x.tokens.shape[1])
    ct, xt = _widen(c.tokens, width, model), _widen(x.tokens, width, model)
    am = None if c.attention_mask is None else _widen(c.attention_mask, width, None)
    has_head = model_kind(model).lm_head
    n = len(c)
    answer = wrong_t = torch.full((n,), -1)
    if (answers is None) != (wrong is None):
        raise DataError("give both answers= and wrong= (the logit difference compares them), or neither")
    if answers is not None:
        if not has_head and metric is None:
            raise UnsupportedModelError(
                "answers= define a logit-difference metric, but this model has no trained language-model head; "
                "leave answers out (the metric is then the similarity of the sentence embedding to the clean one) "
                "or pass metric="
            )
        answer = _answer_ids(model, answers, c, "answers")
        wrong_t = _answer_ids(model, wrong, c, "wrong")  # type: ignore[arg-type]
    data: dict[str, Tensor] = {}
    if metric is None:
        if answers is not None:
            metric = logit_diff
        elif not has_head:
            metric = embedding_similarity
            data["clean_embedding"] = _clean_embedding(model, ct, am)
        else:
            raise DataError(
                "no metric: give answers= and wrong= (logit difference) or metric=(output, batch) -> per-prompt values"
            )
    lab = None if labels is None else torch.as_tensor(labels).long()
    if lab is not None and lab.shape != (n,):
        raise DataError(f"labels must have one entry per prompt ({n}), got shape {tuple(lab.shape)}")
    return PromptBatch(
        task=name,
        clean=ct,
        corrupted=xt,
        answer=answer,
        wrong=wrong_t,
        pos=c.last,
        labels=lab,
        attention_mask=am,
        vocab=vocab_id(model),
        metric_fn=metric,
        data=data,
        constants={"d_vocab": torch.tensor(int(model.cfg.d_vocab))},
        tokenizer=tokenizer_of(model),
    )


def from_texts(
    model: Any, texts: Any, labels: Sequence[int] | Tensor | None = None, *, name: str = "texts"
) -> PromptBatch:
    """A :class:`PromptBatch` of texts (optionally labelled), for erasure, probes, caching and the logit lens.

    ``corrupted`` equals ``clean`` (there is no contrast); padding is masked (``batch.attention_mask``) and
    ``batch.pos`` is each text's last real token.
    """
    enc = encode(model, texts, what="texts")
    lab = None
    if labels is not None:
        lab = torch.as_tensor(labels)
        if lab.dtype.is_floating_point:
            raise DataError(f"labels must be integer classes, got dtype {lab.dtype}")
        lab = lab.long()
        if lab.shape != (len(enc),):
            raise DataError(f"labels must have one entry per text ({len(enc)}), got shape {tuple(lab.shape)}")
        if torch.unique(lab).numel() < 2:
            warnings.warn("all texts have the same label", MechworkWarning, stacklevel=2)
    n = len(enc)
    return PromptBatch(
        task=name,
        clean=enc.tokens,
        corrupted=enc.tokens.clone(),
        answer=torch.full((n,), -1),
        wrong=torch.full((n,), -1),
        pos=enc.last,
        labels=lab,
        attention_mask=enc.attention_mask,
        vocab=vocab_id(model),
        constants={"d_vocab": torch.tensor(int(model.cfg.d_vocab))},
        tokenizer=tokenizer_of(model),
    )


def _widen(t: Tensor, width: int, model: Any) -> Tensor:
    if t.shape[1] == width:
        return t
    from ..core.prompts import pad_id

    fill = pad_id(model) if model is not None else 0
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), fill, dtype=t.dtype)], 1)


@torch.inference_mode()
def _clean_embedding(model: Any, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
    from ..core.hooks import model_device, run_with_hooks
    from .batch import mean_pool

    dev = model_device(model)
    am = None if attention_mask is None else attention_mask.to(dev)
    hidden = run_with_hooks(model, tokens.to(dev), attention_mask=am)
    holder = PromptBatch("_", tokens, tokens, tokens[:, 0], tokens[:, 0], tokens[:, 0], attention_mask=attention_mask)
    return mean_pool(hidden.float(), holder.to(dev)).cpu()
