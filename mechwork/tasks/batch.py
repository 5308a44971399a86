"""``PromptBatch``: clean/corrupted prompt pairs with answers, labels and (optionally) their own metric, plus the
read-outs task metrics share (``gather_last``, ``logit_diff``, ``mean_pool``)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.errors import DataError, ShapeError

TOY_VOCAB = "mechwork-toy"


@dataclass
class PromptBatch:
    """A batch of prompts for one task.

    Attributes
    ----------
    clean, corrupted : Int[Tensor, "batch pos"]
        Token ids (BOS/CLS first where the model uses one) of equal shape, right-padded; ``corrupted`` removes
        the information the task needs.
    answer, wrong : Int[Tensor, "batch"]
        The correct next token at ``pos`` and the contrasting wrong one (IOI: indirect object vs subject);
        ``-1`` where the batch has none (``from_pairs`` without answers, ``from_texts``).
    pos : Int[Tensor, "batch"]
        Position whose output predicts ``answer`` (the last prompt token; on an encoder the token before
        ``[SEP]``).
    labels : Int[Tensor, "batch"] or None
        Class labels where the task has them (gender 0/1, style 0/1).
    loss_mask, targets : Tensor or None
        For multi-token metrics (induction): positions scored and their next-token targets.
    attention_mask : Int[Tensor, "batch pos"] or None
        1 on real tokens, 0 on padding (shared by clean and corrupted, which have the same lengths); ``None``
        when no row is padded.
    vocab : str or None
        Identity of the tokenizer the prompts were rendered with (``"mechwork-toy"``: the shipped models'
        vocabulary; None: unknown, e.g. a batch built by hand); capabilities refuse a batch rendered for another
        model.
    metric_fn : callable or None
        The batch's own metric ``(output, batch) -> [batch]`` (``from_pairs``); None: the task's.
    data : dict of str to Tensor
        Further per-prompt tensors (first axis = prompts), e.g. the clean sentence embeddings that
        :func:`embedding_similarity` compares with.
    constants : dict of str to Tensor
        Tensors shared by all prompts (e.g. the ids of a style lexicon under the model's tokenizer).
    tokenizer : tokenizer or None
        For :meth:`str_tokens` / :meth:`texts` (None: the toy vocabulary).
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
    attention_mask: Int[Tensor, "batch pos"] | None = None
    vocab: str | None = None
    metric_fn: Callable[[Tensor, Any], Tensor] | None = field(default=None, repr=False)
    data: dict[str, Tensor] = field(default_factory=dict, repr=False)
    constants: dict[str, Tensor] = field(default_factory=dict, repr=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

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
        if self.attention_mask is not None and self.attention_mask.shape != self.clean.shape:
            raise ShapeError(
                f"attention_mask {tuple(self.attention_mask.shape)} does not match the prompts {tuple(self.clean.shape)}"
            )
        for k, v in self.data.items():
            if v.shape[0] != n:
                raise ShapeError(f"data[{k!r}] has {v.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def aligned(self) -> bool:
        """Whether position ``i`` is the same slot in every prompt (equal lengths, same prediction position)."""
        return self.attention_mask is None and bool((self.pos == self.pos[0]).all())

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """Real (non-padding) tokens."""
        if self.attention_mask is None:
            return torch.ones_like(self.clean, dtype=torch.bool)
        return self.attention_mask.bool()

    def to(self, device: str | torch.device) -> PromptBatch:
        return dataclasses.replace(
            self,
            **{k: v.to(device) for k, v in self._tensors().items()},
            data={k: v.to(device) for k, v in self.data.items()},
            constants={k: v.to(device) for k, v in self.constants.items()},
        )

    def select(self, idx: Sequence[int] | slice | Tensor) -> PromptBatch:
        """A sub-batch (rows ``idx``)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            rows = torch.as_tensor(idx).tolist()
        t = torch.tensor(rows, dtype=torch.long)
        am = self.attention_mask
        if am is not None:
            am = am[t.to(am.device)]
            am = None if bool(am.bool().all()) else am
        return dataclasses.replace(
            self,
            **{k: v[t.to(v.device)] for k, v in self._tensors().items() if k != "attention_mask"},
            attention_mask=am,
            data={k: v[t.to(v.device)] for k, v in self.data.items()},
            info=[self.info[i] for i in rows] if self.info else [],
        )

    def _tensors(self) -> dict[str, Tensor]:
        names = ("clean", "corrupted", "answer", "wrong", "pos", "labels", "loss_mask", "targets", "attention_mask")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def str_tokens(self, i: int = 0, *, corrupted: bool = False) -> list[str]:
        """The tokens of prompt ``i`` up to ``pos`` as strings (BOS included), e.g. for axis labels."""
        row = (self.corrupted if corrupted else self.clean)[i]
        n = int(self.pos[i]) + 1
        if self.tokenizer is None:
            from ..data.tokenizer import decode_ids

            return decode_ids(row[:n])
        from ..core.prompts import _row_strings

        return _row_strings(_Holder(self.tokenizer), row[:n].tolist())

    def texts(self, *, corrupted: bool = False) -> list[str]:
        """Each prompt as text (special tokens dropped)."""
        if self.tokenizer is None:
            return [" ".join(self.str_tokens(i, corrupted=corrupted)[1:]) for i in range(len(self))]
        rows = self.corrupted if corrupted else self.clean
        return [
            self.tokenizer.decode(rows[i][self.mask[i]].tolist(), skip_special_tokens=True) for i in range(len(self))
        ]

    # --- notebook display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        extra = f", labels={len(torch.unique(self.labels))} classes" if self.labels is not None else ""
        pad = "" if self.attention_mask is None else ", padded"
        return (
            f"PromptBatch(task={self.task!r}, n={len(self)}, pos={int(self.clean.shape[1])}{pad}{extra}, "
            f"vocab={self.vocab!r})"
        )

    def _repr_html_(self) -> str:
        rows = []
        for i in range(min(3, len(self))):
            try:
                clean = " ".join(self.str_tokens(i))
                bad = " ".join(self.str_tokens(i, corrupted=True))
            except Exception:  # noqa: BLE001 - display must not fail
                clean = bad = "?"
            rows.append(f"<tr><td>{html.escape(clean)}</td><td>{html.escape(bad)}</td></tr>")
        facts = {
            "task": self.task,
            "prompts": len(self),
            "positions": int(self.clean.shape[1]),
            "aligned": self.aligned,
            "labels": "yes" if self.labels is not None else "no",
            "metric": getattr(self.metric_fn, "__name__", "custom") if self.metric_fn else f"task {self.task!r}",
            "vocab": self.vocab,
        }
        from ..viz.cards import card

        return card("PromptBatch", facts, table=("clean", "corrupted", rows))


class _Holder:
    """Gives a bare tokenizer the ``.tokenizer`` attribute the core conversion reads."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer


def gather_last(logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, "batch vocab"]:
    """Output at each prompt's prediction position."""
    if logits.ndim != 3 or logits.shape[0] != len(batch):
        raise ShapeError(f"logits must be [batch={len(batch)}, pos, vocab], got {tuple(logits.shape)}")
    idx = batch.pos.to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
    """``logit[answer] - logit[wrong]`` at the prediction position, per prompt."""
    last = gather_last(logits, batch)
    if bool((batch.answer < 0).any()) or bool((batch.wrong < 0).any()):
        raise DataError("this batch has no answer/wrong tokens; give answers= and wrong= or a metric")
    vocab = batch.constants.get("d_vocab")
    if vocab is not None and last.shape[-1] != int(vocab):
        raise ShapeError(
            f"the metric got outputs of width {last.shape[-1]}, not logits over the vocabulary ({int(vocab)}); a "
            "logit difference needs a model with a language-model head"
        )
    a = batch.answer.to(last.device)[:, None]
    w = batch.wrong.to(last.device)[:, None]
    return (last.gather(1, a) - last.gather(1, w)).squeeze(1)


def mean_pool(hidden: Float[Tensor, "batch pos d"], batch: PromptBatch) -> Float[Tensor, "batch d"]:
    """Mean of the hidden states over each prompt's real tokens (the sentence-transformers pooling)."""
    m = batch.mask.to(hidden.device)[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def embedding_similarity(hidden: Float[Tensor, "batch pos d"], batch: PromptBatch) -> Float[Tensor, " batch"]:
    """Cosine similarity of each prompt's mean-pooled last hidden state with the clean run's (``1`` = the clean
    sentence embedding). The default metric of ``from_pairs`` on a headless encoder such as all-MiniLM-L6-v2."""
    ref = batch.data.get("clean_embedding")
    if ref is None:
        raise DataError("embedding_similarity needs batch.data['clean_embedding'] (from_pairs computes it)")
    if hidden.shape[-1] != ref.shape[-1]:
        raise ShapeError(
            f"embedding_similarity got outputs of width {hidden.shape[-1]}, the clean embeddings have {ref.shape[-1]}"
        )
    pooled = mean_pool(hidden.float(), batch)
    return torch.nn.functional.cosine_similarity(pooled, ref.to(pooled.device).float(), dim=-1)
