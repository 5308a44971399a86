"""Tasks over the generated language: seeded prompt batches with answers, corruptions, labels and a metric."""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.errors import DataError, ShapeError
from ..data.tokenizer import decode_ids, encode_words


@dataclass
class PromptBatch:
    """A batch of prompts for one task.

    Attributes
    ----------
    clean, corrupted : Int[Tensor, "batch pos"]
        Token ids (BOS first) of equal shape; ``corrupted`` removes the information the task needs.
    answer, wrong : Int[Tensor, "batch"]
        The correct next token at ``pos`` and the contrasting wrong one (IOI: indirect object vs subject).
    pos : Int[Tensor, "batch"]
        Position whose logits predict ``answer`` (the last prompt token).
    labels : Int[Tensor, "batch"] or None
        Class labels where the task has them (gender 0/1, style 0/1).
    loss_mask, targets : Tensor or None
        For multi-token metrics (induction): positions scored and their next-token targets.
    """

    task: str
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]
    pos: Int[Tensor, " batch"]
    labels: Int[Tensor, " batch"] | None = None
    loss_mask: Bool[Tensor, "batch pos"] | None = None
    targets: Int[Tensor, "batch pos"] | None = None
    info: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise ShapeError(
                f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ in shape"
            )
        n = self.clean.shape[0]
        if n == 0:
            raise DataError("empty prompt batch")
        for name in ("answer", "wrong", "pos", "labels"):
            t = getattr(self, name)
            if t is not None and t.shape != (n,):
                raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def to(self, device: str | torch.device) -> PromptBatch:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self._tensors().items()})

    def select(self, idx: Sequence[int] | slice | Tensor) -> PromptBatch:
        """A sub-batch (rows ``idx``)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            rows = torch.as_tensor(idx).tolist()
        t = torch.tensor(rows, dtype=torch.long)
        return dataclasses.replace(
            self,
            **{k: v[t.to(v.device)] for k, v in self._tensors().items()},
            info=[self.info[i] for i in rows] if self.info else [],
        )

    def _tensors(self) -> dict[str, Tensor]:
        names = ("clean", "corrupted", "answer", "wrong", "pos", "labels", "loss_mask", "targets")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def str_tokens(self, i: int = 0, *, corrupted: bool = False) -> list[str]:
        """The words of prompt ``i`` (with ``<bos>``), e.g. for axis labels."""
        row = (self.corrupted if corrupted else self.clean)[i]
        return decode_ids(row[: int(self.pos[i]) + 1])

    def texts(self, *, corrupted: bool = False) -> list[str]:
        return [" ".join(self.str_tokens(i, corrupted=corrupted)[1:]) for i in range(len(self))]


def gather_last(logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, "batch vocab"]:
    """Logits at each prompt's prediction position."""
    if logits.ndim != 3 or logits.shape[0] != len(batch):
        raise ShapeError(f"logits must be [batch={len(batch)}, pos, vocab], got {tuple(logits.shape)}")
    idx = batch.pos.to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
    """``logit[answer] - logit[wrong]`` at the prediction position, per prompt."""
    last = gather_last(logits, batch)
    a = batch.answer.to(last.device)[:, None]
    w = batch.wrong.to(last.device)[:, None]
    return (last.gather(1, a) - last.gather(1, w)).squeeze(1)


@dataclass
class Task:
    """Base class: subclasses implement :meth:`_make` (one prompt) and may override :meth:`metric`."""

    name: str = "task"
    description: str = ""

    def _rng(self, seed: int, split: str) -> random.Random:
        return random.Random(zlib.crc32(f"{self.name}/{split}/{seed}".encode()))

    def prompts(self, n: int, *, seed: int = 0, split: str = "test") -> PromptBatch:
        """``n`` seeded prompts; the same ``(n, seed, split)`` gives the same batch everywhere."""
        if n <= 0:
            raise DataError(f"n must be positive, got {n}")
        if split not in ("train", "test", "all"):
            raise DataError(f"split must be 'train', 'test' or 'all', got {split!r}")
        rng = self._rng(seed, split)
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
            clean=C,
            corrupted=X,
            answer=ids("answer"),
            wrong=ids("wrong"),
            pos=torch.tensor([len(c) - 1 for c in clean]),
            labels=labels,
            info=[it.get("info", {}) for it in items],
            **self._extra(items, C),
        )

    def _extra(self, items: list[dict[str, Any]], clean: Tensor) -> dict[str, Tensor]:
        return {}

    @torch.inference_mode()
    def evaluate(
        self, model: Any, n: int = 256, *, seed: int = 0, split: str = "test", batch_size: int = 128
    ) -> dict[str, float]:
        """Run the model on ``n`` fresh prompts: mean metric, accuracy, and the corrupted-run metric."""
        batch = self.prompts(n, seed=seed, split=split)
        dev = next(model.parameters()).device
        ms, accs, mcs = [], [], []
        for lo in range(0, n, batch_size):
            b = batch.select(slice(lo, lo + batch_size)).to(dev)
            logits = model(b.clean)
            ms.append(self.metric(logits, b).cpu())
            accs.append(self.accuracy(logits, b).cpu())
            mcs.append(self.metric(model(b.corrupted), b).cpu())
        return {
            "metric": float(torch.cat(ms).mean()),
            "accuracy": float(torch.cat(accs).mean()),
            "metric_corrupted": float(torch.cat(mcs).mean()),
            "n": n,
        }


Registry = dict[str, Callable[..., Task]]
