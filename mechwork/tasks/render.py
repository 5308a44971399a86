"""Rendering a task for any model's tokenizer.

The generated language's prompts are word lists. For a model with another tokenizer (GPT-2 BPE, LLaMA's
metaspace BPE, BERT WordPiece) each prompt is joined into text (``"store , John"`` -> ``"store, John"``) and
encoded by :func:`mechwork.core.prompts.encode_texts`, so BOS/CLS/SEP follow the model. A drawn prompt is kept
only if it renders cleanly for that tokenizer:

- the answer and the wrong token are each exactly one token *as a continuation of the prompt* (``" Mary"`` in
  byte-level BPE, ``"▁Mary"`` in metaspace, ``"mary"`` in WordPiece): the prompt's tokens followed by the
  answer's token must equal the tokens of ``prompt + " " + answer``;
- the clean and the corrupted prompt have the same number of tokens (the corrupted name is also a single
  token there), so positions stay aligned between the two;
- no token is the tokenizer's unknown token.

Prompts are drawn until ``n`` pass; when too few do (e.g. a tokenizer with no single-token names) an
:class:`~mechwork.core.errors.UnsupportedModelError` says why. Prompts of different lengths (different
templates) are right-padded with an attention mask; ``batch.aligned`` says whether positions coincide.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch

from ..core.errors import MechworkWarning, UnsupportedModelError
from ..core.kind import require_causal
from ..core.prompts import bos_id, pad_rows, prepends_bos, special_ids, tokenizer_of, vocab_id
from .batch import PromptBatch

MAX_DRAWS_PER_PROMPT = 40
LOW_ACCEPTANCE = 0.2


def detokenize(words: list[str]) -> str:
    """Words of the generated language as ordinary text (no space before punctuation)."""
    text = " ".join(words)
    for p in (",", ".", "!", "?", ";", ":"):
        text = text.replace(f" {p}", p)
    return text


def continuation_id(tokenizer: Any, prefix: str, word: str) -> int | None:
    """The single token ``word`` becomes after ``prefix`` (with its leading space), or None when it is not one."""
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{prefix} {word}", add_special_tokens=False)["input_ids"]
    if len(full) != len(base) + 1 or list(full[: len(base)]) != list(base):
        return None
    return int(full[-1])


def _wordlike(piece: str) -> bool:
    core = piece.lstrip("Ġ▁ ")
    return core.isascii() and core.isalpha()


def render_task(task: Any, model: Any, rng: random.Random, n: int, split: str) -> PromptBatch:
    """``n`` prompts of ``task`` rendered through ``model``'s tokenizer (module docstring)."""
    from .language import Induction

    tokenizer_of(model, what=f"rendering task {task.name!r}")
    if isinstance(task, Induction):
        return _render_induction(task, model, rng, n)
    return _render_items(task, model, rng, n, split)


def _render_items(task: Any, model: Any, rng: random.Random, n: int, split: str) -> PromptBatch:
    from ..core.prompts import encode_texts

    tok = tokenizer_of(model)
    unk = getattr(tok, "unk_token_id", None)
    constants = _constants(task, model)
    kept: list[dict[str, Any]] = []
    drawn = 0
    limit = MAX_DRAWS_PER_PROMPT * n + 200
    while len(kept) < n and drawn < limit:
        for it in task._items(rng, min(max(2 * (n - len(kept)), 16), 4096), split):
            drawn += 1
            text = detokenize(it["clean"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MechworkWarning)
                clean, bad = encode_texts(model, [text, detokenize(it["corrupted"])])
            if len(clean) != len(bad) or (unk is not None and (unk in clean or unk in bad)):
                continue
            a = continuation_id(tok, text, it["answer"])
            w = continuation_id(tok, text, it["wrong"])
            if a is None or w is None or a == w:
                continue
            kept.append({**it, "_clean": clean, "_bad": bad, "_a": a, "_w": w})
            if len(kept) == n:
                break
    if len(kept) < n:
        raise UnsupportedModelError(
            f"task {task.name!r} cannot be rendered for this tokenizer: only {len(kept)} of {drawn} drawn prompts "
            "have single-token answers (e.g. names, pronouns) and corruptions of the same token length. The task's "
            "words are mostly several tokens long for this model; write your own prompts with "
            "mechwork.tasks.from_pairs(model, clean=..., corrupted=..., answers=..., wrong=...)"
        )
    if drawn and len(kept) / drawn < LOW_ACCEPTANCE:
        warnings.warn(
            f"task {task.name!r}: only {len(kept)} of {drawn} drawn prompts ({len(kept) / drawn:.0%}) render with "
            "single-token answers for this tokenizer; the batch uses the words that do",
            MechworkWarning,
            stacklevel=4,
        )
    enc = pad_rows(model, [k["_clean"] for k in kept])
    bad = pad_rows(model, [k["_bad"] for k in kept])
    labels = torch.tensor([k["label"] for k in kept]) if "label" in kept[0] else None
    return PromptBatch(
        task=task.name,
        clean=enc.tokens,
        corrupted=bad.tokens,
        answer=torch.tensor([k["_a"] for k in kept]),
        wrong=torch.tensor([k["_w"] for k in kept]),
        pos=enc.last,
        labels=labels,
        info=[k.get("info", {}) for k in kept],
        attention_mask=enc.attention_mask,
        vocab=vocab_id(model),
        constants=constants,
        tokenizer=tok,
    )


def _constants(task: Any, model: Any) -> dict[str, torch.Tensor]:
    out = {"d_vocab": torch.tensor(int(model.cfg.d_vocab))}
    lexicons = getattr(task, "lexicons", None)
    if lexicons:
        tok = tokenizer_of(model)
        for key, (prefix, words) in lexicons().items():
            ids = sorted({i for w in words if (i := continuation_id(tok, prefix, w)) is not None})
            if not ids:
                raise UnsupportedModelError(
                    f"task {task.name!r}: none of the words of its {key} lexicon is a single token for this tokenizer"
                )
            out[key] = torch.tensor(ids)
    return out


def _render_induction(task: Any, model: Any, rng: random.Random, n: int) -> PromptBatch:
    """Repeated segments of random tokens of the model's vocabulary (word-like tokens where there are enough)."""
    from ..data import grammar as G

    require_causal(model, "the induction task")
    tok = tokenizer_of(model)
    specials = special_ids(model)
    vocab = int(model.cfg.d_vocab)
    ids = [i for i in range(min(vocab, len(tok))) if i not in specials]
    wordy = [i for i, s in zip(ids, tok.convert_ids_to_tokens(ids)) if isinstance(s, str) and _wordlike(s)]
    pool = wordy if len(wordy) >= 64 else ids
    p = rng.randint(*G.INDUCTION_PREFIX) if task.prefix_len is None else task.prefix_len
    L = rng.randint(*G.INDUCTION_SEGMENT) if task.segment_len is None else task.segment_len
    head = [bos_id(model)] if prepends_bos(model) else []
    width = len(head) + p + 2 * L - 1
    if width > int(model.cfg.n_ctx):
        L = max(2, (int(model.cfg.n_ctx) - len(head) - p + 1) // 2)
    rows, bads, answers, wrongs = [], [], [], []
    for _ in range(n):
        prefix = [rng.choice(pool) for _ in range(p)]
        seg = [rng.choice(pool) for _ in range(L)]
        fresh = [rng.choice([t for t in pool[:256] if t != s] or pool) for s in seg]
        rows.append(head + prefix + seg + seg[:-1])
        bads.append(head + prefix + fresh + seg[:-1])
        answers.append(seg[-1])
        wrongs.append(rng.choice([t for t in pool[:256] if t != seg[-1]] or pool))
    enc = pad_rows(model, rows)
    clean = enc.tokens
    start = len(head) + p + L  # first token of the second copy
    mask = torch.zeros_like(clean, dtype=torch.bool)
    mask[:, start : start + L - 1] = True
    targets = torch.zeros_like(clean)
    targets[:, start : start + L - 1] = clean[:, len(head) + p + 1 : len(head) + p + L]
    return PromptBatch(
        task=task.name,
        clean=clean,
        corrupted=pad_rows(model, bads).tokens,
        answer=torch.tensor(answers),
        wrong=torch.tensor(wrongs),
        pos=enc.last,
        info=[{"prefix_len": p, "segment_len": L}] * n,
        loss_mask=mask,
        targets=targets,
        vocab=vocab_id(model),
        constants={"d_vocab": torch.tensor(vocab)},
        tokenizer=tok,
    )
