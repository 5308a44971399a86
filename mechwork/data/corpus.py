"""The training corpus: a seeded stream of mixed documents, turned into padded token batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..core.errors import ConfigError, DataError
from . import vocab as V
from .grammar import DEFAULT_MIX, GENERATORS, Doc
from .tokenizer import encode_words, word_to_id


@dataclass
class Corpus:
    """A reproducible stream of documents of the generated language.

    Parameters
    ----------
    seed : int
        Seed of the document stream; the same seed gives the same documents on every machine.
    mix : mapping of kind to weight
        Share of each document kind (``ioi``, ``gender``, ``style``, ``induction``). Default: 35/20/25/20.
    split : str
        ``"train"`` draws IOI name pairs from the training pairs only; ``"test"`` from the held-out pairs;
        ``"all"`` from both.
    options : mapping of kind to keyword arguments
        Passed to that kind's generator, e.g. ``{"induction": {"segment_range": (8, 24)}}``.
    """

    seed: int = 0
    mix: Mapping[str, float] | None = None
    split: str = "train"
    options: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        mix = dict(DEFAULT_MIX if self.mix is None else self.mix)
        unknown = set(mix) - set(GENERATORS)
        if unknown:
            raise ConfigError(f"unknown document kinds {sorted(unknown)}; known: {sorted(GENERATORS)}")
        if not mix or sum(mix.values()) <= 0 or any(v < 0 for v in mix.values()):
            raise ConfigError(f"mix must have non-negative weights with a positive sum, got {mix}")
        if self.split not in ("train", "test", "all"):
            raise ConfigError(f"split must be 'train', 'test' or 'all', got {self.split!r}")
        unknown_opts = set(self.options or {}) - set(GENERATORS)
        if unknown_opts:
            raise ConfigError(f"options for unknown document kinds {sorted(unknown_opts)}")
        self._kinds = list(mix)
        self._weights = [mix[k] for k in self._kinds]
        self._rng = random.Random(self.seed)

    def doc(self) -> Doc:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        kwargs = dict((self.options or {}).get(kind, {}))
        if kind == "ioi":
            kwargs["split"] = self.split
        return GENERATORS[kind](self._rng, **kwargs)

    def docs(self, n: int) -> list[Doc]:
        return [self.doc() for _ in range(n)]

    def __iter__(self) -> Iterator[Doc]:
        while True:
            yield self.doc()

    def texts(self, n: int) -> list[str]:
        """``n`` documents as plain text (no BOS/EOS)."""
        return [d.text for d in self.docs(n)]

    def batch(self, n: int, n_ctx: int) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
        """``n`` documents as ``<bos> words <eos> <pad>...`` token rows (padded to the longest) and a mask
        of the positions whose next token is a real token (the loss mask for next-token prediction)."""
        return docs_to_batch(self.docs(n), n_ctx)


def docs_to_batch(docs: list[Doc], n_ctx: int) -> tuple[Tensor, Tensor]:
    if not docs:
        raise DataError("no documents given")
    rows = [encode_words(d.words, bos=True, eos=True) for d in docs]
    longest = max(len(r) for r in rows)
    if longest > n_ctx:
        raise DataError(f"a document has {longest} tokens (with BOS/EOS) but the context is {n_ctx}")
    pad = word_to_id()[V.PAD]
    tokens = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r) - 1] = True
    return tokens, mask
