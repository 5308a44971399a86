"""Prompts -> tokens and tokens -> strings, through the model's own tokenizer: the one conversion every
capability uses.

:func:`encode` accepts a text, a list of texts, token ids (``[pos]`` or ``[batch, pos]``), a Hugging Face
``BatchEncoding`` / dict with ``input_ids`` (and ``attention_mask``), a :class:`~mechwork.tasks.PromptBatch`
or an :class:`Encoded`, and returns an :class:`Encoded`: right-padded ``tokens`` with an ``attention_mask``
where rows differ in length, and the index of each row's last real token.

Special tokens follow the model's conventions: a causal model gets its BOS first when the model family
prepends one (``model.cfg.default_prepend_bos``: GPT-2, LLaMA and the shipped models do, Pythia does not); a
GPT-2-style tokenizer whose only special token is ``<|endoftext|>`` uses it as BOS. An encoder gets what its
tokenizer adds (``[CLS] ... [SEP]`` for BERT/MiniLM). Nothing is truncated silently: prompts longer than the
context are an error unless ``truncate=True`` (then a warning says so). Unknown words of a word-level
tokenizer (the shipped models' vocabulary) give a warning naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import DataError, MechworkWarning
from .hooks import id_matrix
from .kind import is_causal


@dataclass(frozen=True)
class Encoded:
    """Tokens of a batch of prompts.

    Attributes
    ----------
    tokens : Int[Tensor, "batch pos"]
        Right-padded token ids.
    attention_mask : Int[Tensor, "batch pos"] or None
        1 on real tokens, 0 on padding; ``None`` when no row is padded.
    last : Int[Tensor, " batch"]
        Index of each row's last real token (for an encoder: the last token before ``[SEP]``).
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"] | None
    last: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def mask(self) -> Tensor:
        """``attention_mask`` as booleans (all true when there is no padding)."""
        if self.attention_mask is None:
            return torch.ones_like(self.tokens, dtype=torch.bool)
        return self.attention_mask.bool()

    @property
    def aligned(self) -> bool:
        """Whether every row has the same length (position ``i`` means the same slot in every prompt)."""
        return self.attention_mask is None

    def to(self, device: Any) -> Encoded:
        am = None if self.attention_mask is None else self.attention_mask.to(device)
        return Encoded(self.tokens.to(device), am, self.last.to(device))


# --- the tokenizer ---------------------------------------------------------------------------------------


def tokenizer_of(model: Any, *, what: str | None = None) -> Any:
    """The model's tokenizer; with ``what``, a :class:`DataError` when it has none (weights-only folders)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None and what is not None:
        raise DataError(
            f"{what} needs a tokenizer, and this model has none (a weights-only folder?): pass token ids "
            "([batch, pos] integer tensors) instead, or add the tokenizer files to the model folder"
        )
    return tok


def bos_id(model: Any) -> int | None:
    """The id a causal model's prompts start with (BOS, or GPT-2's ``<|endoftext|>``), or None."""
    tok = tokenizer_of(model)
    if tok is None:
        return None
    i = getattr(tok, "bos_token_id", None)
    if i is None:
        i = getattr(tok, "eos_token_id", None)
    return None if i is None else int(i)


def prepends_bos(model: Any) -> bool:
    """Whether prompts of this causal model start with BOS (the model family's convention)."""
    return bool(getattr(model.cfg, "default_prepend_bos", True)) and bos_id(model) is not None


def pad_id(model: Any) -> int:
    """Id used for padding (the tokenizer's pad, else EOS, else 0); padded positions are masked out anyway."""
    tok = tokenizer_of(model)
    for name in ("pad_token_id", "eos_token_id"):
        i = getattr(tok, name, None) if tok is not None else None
        if i is not None:
            return int(i)
    return 0


def special_ids(model: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, PAD, CLS, SEP, UNK, MASK ...)."""
    tok = tokenizer_of(model)
    if tok is None:
        return set()
    return {int(i) for i in getattr(tok, "all_special_ids", []) if i is not None}


def is_word_level(tokenizer: Any) -> bool:
    """Whether a fast tokenizer is a word-level vocabulary (one token per whitespace-separated word)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def _ids(tokenizer: Any, texts: list[str], *, special: bool) -> list[list[int]]:
    return [list(r) for r in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def encode_texts(model: Any, texts: Sequence[str], *, bos: bool | None = None) -> list[list[int]]:
    """Token ids of each text, special tokens placed as the model expects (module docstring); no padding."""
    tok = tokenizer_of(model, what="text prompts")
    texts = list(texts)
    if not is_causal(model):
        rows = _ids(tok, texts, special=True)  # [CLS] ... [SEP] as the tokenizer defines them
    else:
        rows = _ids(tok, texts, special=False)
        want = prepends_bos(model) if bos is None else bos
        b = bos_id(model)
        if want and b is not None:
            rows = [[b] + r for r in rows]
    _warn_unknown(tok, texts, rows)
    return rows


def _warn_unknown(tok: Any, texts: list[str], rows: list[list[int]]) -> None:
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or not any(unk in r for r in rows):
        return
    words: list[str] = []
    if is_word_level(tok):
        vocab = tok.get_vocab()
        words = sorted({w for t in texts for w in t.split() if w not in vocab})
    n = sum(unk in r for r in rows)
    shown = f": {', '.join(repr(w) for w in words[:8])}{' ...' if len(words) > 8 else ''}" if words else ""
    warnings.warn(
        f"{n} of {len(rows)} prompts contain words the tokenizer does not know (encoded as "
        f"{getattr(tok, 'unk_token', '<unk>')}){shown}; the model sees an unknown-word token there",
        MechworkWarning,
        stacklevel=4,
    )


def pad_rows(model: Any, rows: Sequence[Sequence[int]], *, last_offset: int | None = None) -> Encoded:
    """Right-pad token rows into an :class:`Encoded` (mask ``None`` when all rows have the same length).

    ``last`` is each row's last token, or the token before a trailing ``[SEP]`` on an encoder.
    """
    if not rows:
        raise DataError("no prompts given (empty list)")
    lens = [len(r) for r in rows]
    if min(lens) == 0:
        raise DataError(f"prompt {lens.index(0)} is empty (no tokens)")
    width = max(lens)
    tokens = torch.full((len(rows), width), pad_id(model), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    last = torch.tensor(lens) - 1
    if last_offset is None:
        sep = getattr(tokenizer_of(model), "sep_token_id", None)
        if not is_causal(model) and sep is not None:
            ends = torch.tensor([int(r[-1]) == sep and len(r) > 1 for r in rows])
            last = last - ends.long()
    else:
        last = last - last_offset
    return Encoded(tokens, None if min(lens) == width else mask, last)


def _empty_list(prompts: Any) -> bool:
    return isinstance(prompts, (list, tuple)) and not prompts


def encode(
    model: Any,
    prompts: Any,
    *,
    bos: bool | None = None,
    truncate: bool = False,
    attention_mask: Tensor | None = None,
    what: str = "prompts",
) -> Encoded:
    """Convert prompts of any accepted form into :class:`Encoded` tokens for ``model``.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    prompts : str, list of str, Int[Tensor, "batch pos"], BatchEncoding/dict, PromptBatch or Encoded
        Token ids are used as given (validated against the vocabulary); a ``PromptBatch`` gives its clean
        prompts (``batch.corrupted`` is a token tensor of the same shape).
    bos : bool, optional
        Causal models: prepend BOS (default: the model family's convention). Ignored for encoders and ids.
    truncate : bool
        Cut prompts longer than the model's context to it (with a warning) instead of raising.
    attention_mask : Int[Tensor, "batch pos"], optional
        For token-id input: the mask of right-padded rows.

    Raises
    ------
    DataError
        Empty input, non-integer ids, ids outside the vocabulary, prompts longer than the context, text
        prompts for a model without a tokenizer.
    """
    if _empty_list(prompts):
        raise DataError(f"{what}: empty list (no prompts given)")
    if isinstance(prompts, Encoded):
        enc = prompts
    elif _is_prompt_batch(prompts):
        check_batch_vocab(model, prompts)
        am = getattr(prompts, "attention_mask", None)
        enc = Encoded(prompts.clean, am, prompts.pos)
    elif isinstance(prompts, str):
        enc = pad_rows(model, encode_texts(model, [prompts], bos=bos))
    elif isinstance(prompts, dict) or (hasattr(prompts, "keys") and "input_ids" in prompts):
        ids = torch.as_tensor(prompts["input_ids"])
        am = prompts.get("attention_mask") if hasattr(prompts, "get") else None
        return encode(model, ids, attention_mask=None if am is None else torch.as_tensor(am), truncate=truncate)
    elif isinstance(prompts, Tensor) or _is_id_rows(prompts):
        enc = _from_ids(model, prompts, attention_mask)
    elif isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts):
        enc = pad_rows(model, encode_texts(model, list(prompts), bos=bos))
    else:
        raise DataError(
            f"{what} must be a text, a list of texts, token ids [batch, pos], a dict with input_ids, or a "
            f"PromptBatch (mechwork.tasks.from_pairs / task.prompts); got {type(prompts).__name__}"
        )
    return _check_context(model, enc, truncate=truncate, what=what)


def _is_prompt_batch(x: Any) -> bool:
    return hasattr(x, "clean") and hasattr(x, "corrupted") and hasattr(x, "pos") and isinstance(x.clean, Tensor)


def _is_id_rows(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(r, (list, tuple, Tensor)) for r in x)


def _from_ids(model: Any, ids: Any, attention_mask: Tensor | None) -> Encoded:
    if _is_id_rows(ids) and not isinstance(ids, Tensor):
        lens = {len(r) for r in ids}
        if len(lens) > 1:
            enc = pad_rows(model, [torch.as_tensor(r).tolist() for r in ids], last_offset=0)
            return _validate_ids(model, enc)
        ids = torch.as_tensor([torch.as_tensor(r).tolist() for r in ids])
    t = id_matrix(ids, what="token ids")
    if attention_mask is None:
        return _validate_ids(model, Encoded(t, None, torch.full((t.shape[0],), t.shape[1] - 1, device=t.device)))
    am = torch.as_tensor(attention_mask).to(t.device).long()
    if am.shape != t.shape:
        raise DataError(f"attention_mask {tuple(am.shape)} does not match the tokens {tuple(t.shape)}")
    lens = am.sum(-1)
    if bool((am != (torch.arange(t.shape[1], device=t.device)[None] < lens[:, None]).long()).any()):
        raise DataError("attention_mask must be right padding (ones, then zeros in every row)")
    if bool((lens == 0).any()):
        raise DataError(f"row {int((lens == 0).nonzero()[0])} of the attention mask selects no token")
    return _validate_ids(model, Encoded(t, None if bool((lens == t.shape[1]).all()) else am, lens - 1))


def _validate_ids(model: Any, enc: Encoded) -> Encoded:
    vocab = int(model.cfg.d_vocab)
    t = enc.tokens
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= vocab:
        raise DataError(f"token ids outside the vocabulary [0, {vocab}): min {lo}, max {hi}")
    return enc


def _check_context(model: Any, enc: Encoded, *, truncate: bool, what: str) -> Encoded:
    ctx = int(model.cfg.n_ctx)
    width = int(enc.tokens.shape[1])
    if width <= ctx:
        return enc
    if not truncate:
        raise DataError(
            f"{what}: the longest prompt has {width} tokens but the model's context is {ctx}; shorten it, split "
            "it into windows, or pass truncate=True to cut it (with a warning)"
        )
    n_cut = int((enc.last >= ctx).sum())
    warnings.warn(
        f"{what}: {n_cut} prompt(s) longer than the model's context of {ctx} tokens were truncated to it",
        MechworkWarning,
        stacklevel=3,
    )
    am = None if enc.attention_mask is None else enc.attention_mask[:, :ctx]
    if am is not None and bool(am.all()):
        am = None
    return Encoded(enc.tokens[:, :ctx], am, enc.last.clamp(max=ctx - 1))


def check_batch_vocab(model: Any, batch: Any) -> None:
    """Refuse a PromptBatch rendered for another tokenizer (e.g. the toy vocabulary on a GPT-2 folder)."""
    vocab = getattr(batch, "vocab", None)
    mine = vocab_id(model)
    if vocab is not None and mine is not None and vocab != mine:
        raise DataError(
            f"this PromptBatch was rendered for the tokenizer {vocab!r}, not this model's ({mine!r}); render the "
            "task for the model: task.prompts(n, seed=..., model=model)"
        )


def vocab_id(model_or_tokenizer: Any) -> str | None:
    """A short identity of a tokenizer (``"mechwork-toy"`` for the shipped models' vocabulary)."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None or not hasattr(tok, "get_vocab"):
        return None
    cached = getattr(tok, "_mechwork_vocab_id", None)
    if cached is not None:
        return cached
    import hashlib

    from ..data.tokenizer import word_to_id

    vocab = tok.get_vocab()
    if vocab == word_to_id():
        ident = "mechwork-toy"
    else:
        h = hashlib.sha1(repr(sorted(vocab.items())).encode()).hexdigest()[:10]
        ident = f"{type(tok).__name__}:{len(vocab)}:{h}"
    try:
        tok._mechwork_vocab_id = ident
    except AttributeError:  # pragma: no cover - a tokenizer refusing attributes
        pass
    return ident


# --- tokens -> strings -----------------------------------------------------------------------------------


def str_tokens(model: Any, tokens: Any) -> list[str] | list[list[str]]:
    """Each token as a readable string, through the model's tokenizer.

    Byte-level BPE tokens keep their leading space (``" Mary"``), metaspace tokens too (``"▁Mary"`` -> ``" Mary"``),
    WordPiece continuations keep ``##``; a model without a tokenizer gives ``"<id>"`` strings. A text is
    encoded first (as :func:`encode` would); ``[batch, pos]`` gives one list per row.
    """
    if isinstance(tokens, str):
        tokens = encode(model, tokens).tokens[0]
    t = torch.as_tensor(tokens) if not isinstance(tokens, Tensor) else tokens
    if t.ndim == 2:
        return [_row_strings(model, r.tolist()) for r in t]
    return _row_strings(model, t.reshape(-1).tolist())


def token_str(model: Any, token: int) -> str:
    """One token id as a string (see :func:`str_tokens`)."""
    return _row_strings(model, [int(token)])[0]


def _row_strings(model: Any, ids: list[int]) -> list[str]:
    tok = tokenizer_of(model)
    if tok is None:
        return [f"<{i}>" for i in ids]
    pieces = tok.convert_ids_to_tokens(ids)
    out = []
    for i, piece in zip(ids, pieces):
        s = tok.decode([i], clean_up_tokenization_spaces=False)
        if isinstance(piece, str) and piece.startswith("▁") and not s.startswith(" "):
            s = " " + s  # the metaspace decoder strips the space of a lone first token
        if isinstance(piece, str) and piece.startswith("##") and not s.startswith("##"):
            s = piece
        out.append(s if s else (piece or f"<{i}>"))
    return out


def decode(model: Any, ids: Any) -> str:
    """Token ids back to text (special tokens dropped), through the model's tokenizer."""
    tok = tokenizer_of(model, what="decoding tokens to text")
    t = torch.as_tensor(ids).reshape(-1).tolist()
    return str(tok.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False))
