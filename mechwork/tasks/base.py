"""Tasks over the generated language: seeded prompt batches with answers, corruptions, labels and a metric.

Without a model (or for a shipped model) prompts are encoded with the generated language's word-level
vocabulary; with ``model=`` they are rendered as text through the model's own tokenizer
(:mod:`mechwork.tasks.render`)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import DataError, ShapeError
from ..core.kind import require_logits
from ..data.tokenizer import encode_words
from .batch import TOY_VOCAB, PromptBatch, embedding_similarity, gather_last, logit_diff, mean_pool


@dataclass
class Task:
    """Base class: subclasses implement :meth:`_make` (one prompt) and may override :meth:`metric`."""

    name: str = "task"
    description: str = ""

    def _rng(self, seed: int, split: str) -> random.Random:
        return random.Random(zlib.crc32(f"{self.name}/{split}/{seed}".encode()))

    #: whether the metric reads logits (models without a trained LM head are refused)
    needs_logits = True

    def prompts(self, n: int, *, seed: int = 0, split: str = "test", model: Any = None) -> PromptBatch:
        """``n`` seeded prompts; the same ``(n, seed, split)`` gives the same batch everywhere.

        Parameters
        ----------
        model : optional
            Render the prompts through this model's tokenizer (words joined into text, answers and names kept
            only where they are single tokens for that tokenizer). Without a model, or for a model with the
            shipped vocabulary, the prompts are the generated language's word-level token ids.

        Raises
        ------
        UnsupportedModelError
            The task cannot be rendered for the model's tokenizer (e.g. no single-token names).
        """
        if n <= 0:
            raise DataError(f"n must be positive, got {n}")
        if split not in ("train", "test", "all"):
            raise DataError(f"split must be 'train', 'test' or 'all', got {split!r}")
        rng = self._rng(seed, split)
        if model is not None:
            from ..core.prompts import vocab_id

            if vocab_id(model) != TOY_VOCAB:
                from .render import render_task

                return render_task(self, model, rng, n, split)
        items = self._items(rng, n, split)
        return self._collate(items)

    # --- to implement ---------------------------------------------------------------------------------
    def _items(self, rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
        """Each item: ``clean`` and ``corrupted`` word lists, ``answer``/``wrong`` words, optional ``label``."""
        raise NotImplementedError

    def metric(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        """Per-prompt metric (default: logit difference answer - wrong). ``.mean()`` for the scalar."""
        return logit_diff(logits, batch)

    def accuracy(self, logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        """Per-prompt accuracy (default: the answer is the top-1 token)."""
        return (gather_last(logits, batch).argmax(-1) == batch.answer.to(logits.device)).float()

    # --- shared ---------------------------------------------------------------------------------------
    def _collate(self, items: list[dict[str, Any]]) -> PromptBatch:
        clean = [encode_words(it["clean"]) for it in items]
        corrupted = [encode_words(it["corrupted"]) for it in items]
        width = max(len(r) for r in clean + corrupted)
        pad = 0
        C = torch.full((len(items), width), pad, dtype=torch.long)
        X = torch.full((len(items), width), pad, dtype=torch.long)
        for i, (c, x) in enumerate(zip(clean, corrupted)):
            if len(c) != len(x):
                raise ShapeError(f"{self.name}: clean and corrupted prompt {i} differ in length")
            C[i, : len(c)] = torch.tensor(c)
            X[i, : len(x)] = torch.tensor(x)
        ids = lambda key: torch.tensor([encode_words([it[key]], bos=False)[0] for it in items])  # noqa: E731
        labels = torch.tensor([it["label"] for it in items]) if "label" in items[0] else None
        return PromptBatch(
            task=self.name,
            vocab=TOY_VOCAB,
            clean=C,
            corrupted=X,
            answer=ids("answer"),
            wrong=ids("wrong"),
            pos=torch.tensor([len(c) - 1 for c in clean]),
            labels=labels,
            info=[it.get("info", {}) for it in items],
            **self._extra(items, C),
        )

    def _extra(self, items: list[dict[str, Any]], clean: Tensor) -> dict[str, Any]:
        return {}

    @torch.inference_mode()
    def evaluate(
        self, model: Any, n: int = 256, *, seed: int = 0, split: str = "test", batch_size: int = 128
    ) -> dict[str, float]:
        """Run the model on ``n`` fresh prompts: mean metric, accuracy, and the corrupted-run metric."""
        if self.needs_logits:
            require_logits(model, f"task {self.name!r}")
        batch = self.prompts(n, seed=seed, split=split, model=model)
        dev = next(model.parameters()).device
        ms, accs, mcs = [], [], []
        for lo in range(0, n, batch_size):
            b = batch.select(slice(lo, lo + batch_size)).to(dev)
            logits = _run(model, b.clean, b)
            ms.append(self.metric(logits, b).cpu())
            accs.append(self.accuracy(logits, b).cpu())
            mcs.append(self.metric(_run(model, b.corrupted, b), b).cpu())
        return {
            "metric": float(torch.cat(ms).mean()),
            "accuracy": float(torch.cat(accs).mean()),
            "metric_corrupted": float(torch.cat(mcs).mean()),
            "n": n,
        }


def _run(model: Any, tokens: Tensor, batch: PromptBatch) -> Tensor:
    from ..core.hooks import run_with_hooks

    return run_with_hooks(model, tokens, attention_mask=batch.attention_mask)


Registry = dict[str, Callable[..., Task]]

__all__ = ["Task", "PromptBatch", "gather_last", "logit_diff", "mean_pool", "embedding_similarity", "Registry"]
