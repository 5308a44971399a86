"""Token sources: texts, token tensors, tasks, files and generators turned into documents, then packed windows.

A *source* is anything that yields documents (1-D token-id sequences). :class:`TokenSource` classifies what
the user passed and iterates its documents; :func:`pack` concatenates documents into fixed-length context
windows, each row of which records the token id, the index of the document it came from and its position in
that document, so that an activation can always be traced back to its text (and, for a task, its label).

Accepted sources
----------------
- a list/tuple of strings: texts, tokenised with the model's tokenizer (no special tokens added for a causal
  model, whose BOS the packing adds; ``[CLS] ... [SEP]`` for an encoder, as its tokenizer defines);
- a list of token-id lists or 1-D tensors, or a 2-D integer tensor: one document per row;
- a :class:`mechwork.tasks.Task`: an endless stream of its prompts (seeded); a ``PromptBatch``: its prompts;
- a :class:`mechwork.data.Corpus`: an endless stream of generated documents, each ending with the tokenizer's EOS;
- ``"corpus"`` (the generated corpus) or ``"task:NAME"`` (a task's prompts), as on the command line;
- a path (``str`` or ``Path``): ``.txt`` (one document per non-empty line), ``.jsonl`` (a string, a list of ids,
  or an object with ``text`` / ``tokens`` / ``input_ids``), ``.safetensors`` (a ``tokens`` / ``input_ids``
  tensor) or ``.npy`` (an integer array, loaded without pickle);
- any other iterable or generator of texts, token lists, 1-D tensors or ``[batch, pos]`` token batches.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ..core.errors import DataError

TEXT_BATCH = 512  # texts tokenised per tokenizer call
TASK_CHUNK = 256  # prompts drawn per task.prompts call


def _as_doc(x: Any, where: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise DataError(f"{where}: token ids must be integers, found dtype {t.dtype}")
    if t.ndim != 1:
        raise DataError(f"{where}: a document must be a 1-D sequence of token ids, found shape {tuple(t.shape)}")
    return t.to(torch.long)


def _is_prompt_batch(x: Any) -> bool:
    return hasattr(x, "clean") and hasattr(x, "pos") and isinstance(x.clean, Tensor)


def _is_task(x: Any) -> bool:
    return callable(getattr(x, "prompts", None)) and callable(getattr(x, "metric", None))


def _is_corpus(x: Any) -> bool:
    return type(x).__name__ == "Corpus" and callable(getattr(x, "texts", None))


@dataclass
class TokenSource:
    """A source of documents (1-D token-id tensors) for activation caching.

    Parameters
    ----------
    source : texts, token tensor, task, prompt batch, corpus, path, or iterable (see the module docstring)
    tokenizer : Hugging Face tokenizer, optional
        Needed for text sources; called with ``add_special_tokens=False``.
    seed : int
        Seed of generated sources (task prompts).

    Attributes
    ----------
    description : str
        A short human-readable description, recorded in the store's manifest.
    finite : bool or None
        Whether the source ends (``None`` when it cannot be known, e.g. a generator).
    """

    source: Any
    tokenizer: Any = None
    seed: int = 0
    special_tokens: bool = False
    model: Any = None

    def __post_init__(self) -> None:
        self.source = named_source(self.source, self.seed)
        self.kind, self.description, self.finite = self._classify(self.source)

    # ------------------------------------------------------------------------------------------------
    def _classify(self, s: Any) -> tuple[str, str, bool | None]:
        if s is None:
            raise DataError("source is None; pass texts, a token tensor, a task, a file path or a generator")
        if isinstance(s, Tensor):
            if s.ndim not in (1, 2) or s.numel() == 0:
                raise DataError(
                    f"a token tensor source must be a non-empty [n] or [docs, pos] tensor, found {tuple(s.shape)}"
                )
            _as_doc(s.reshape(-1)[:1], "token tensor")
            return "tensor", f"token tensor {tuple(s.shape)}", True
        if isinstance(s, (str, Path)):
            p = Path(s).expanduser()
            if not p.is_file():
                raise DataError(
                    f"source {str(s)!r} is not an existing file; pass texts as a list of strings "
                    "(a single string is read as a file path)"
                )
            return "file", f"file {p}", True
        if _is_prompt_batch(s):
            return "prompts", f"{len(s)} prompts of task {getattr(s, 'task', '?')}", True
        if _is_task(s):
            return "task", f"task {getattr(s, 'name', type(s).__name__)} (seed {self.seed})", False
        if _is_corpus(s):
            return "corpus", f"generated corpus (seed {getattr(s, 'seed', '?')})", False
        if isinstance(s, (list, tuple)):
            if not s:
                raise DataError("source is an empty list")
            if all(isinstance(x, str) for x in s):
                return "texts", f"{len(s)} texts", True
            return "docs", f"{len(s)} token sequences", True
        if isinstance(s, dict):
            raise DataError("a dict is not a token source; pass texts, token ids, a task, a path or a generator")
        if isinstance(s, Iterable):
            return "iterable", f"iterable {type(s).__name__}", None
        raise DataError(
            f"cannot use a {type(s).__name__} as a token source; expected texts, a token tensor, a task, "
            "a file path or a generator of token batches"
        )

    # ------------------------------------------------------------------------------------------------
    def documents(self) -> Iterator[Int[Tensor, " n"]]:
        """Iterate the source's documents as 1-D ``int64`` tensors (empty documents are skipped)."""
        it = getattr(self, f"_docs_{self.kind}")()
        for d in it:
            if d.numel():
                yield d

    def _docs_tensor(self) -> Iterator[Tensor]:
        t = self.source
        rows = t[None] if t.ndim == 1 else t
        for r in rows:
            yield _as_doc(r, "token tensor")

    def _docs_prompts(self) -> Iterator[Tensor]:
        b = self.source
        am = getattr(b, "attention_mask", None)
        rendered = getattr(b, "vocab", None) not in (None, "mechwork-toy")
        for i in range(len(b)):
            if am is not None:
                yield b.clean[i][am[i].bool()].to(torch.long)
            elif rendered:  # rendered for a model, unpadded: every token is real (an encoder's [SEP] follows pos)
                yield b.clean[i].to(torch.long)
            else:  # toy / hand-built batches: the prompt ends at its prediction position
                yield b.clean[i, : int(b.pos[i]) + 1].to(torch.long)

    def _docs_task(self) -> Iterator[Tensor]:
        for chunk in itertools.count():
            batch = self.source.prompts(TASK_CHUNK, seed=self.seed * 1_000_003 + chunk, model=self.model)
            yield from TokenSource(batch)._docs_prompts()

    def _docs_corpus(self) -> Iterator[Tensor]:
        # a fresh copy: the documents depend on the corpus's seed only, not on what the object already produced
        src = self.source
        corpus: Any = dataclasses.replace(src) if dataclasses.is_dataclass(src) and not isinstance(src, type) else src
        # documents end with EOS, as the zoo models saw them in training ("<bos> words <eos>"); packing adds the BOS
        eos = getattr(self.tokenizer, "eos_token_id", None)
        tail = torch.tensor([eos], dtype=torch.long) if eos is not None else None
        while True:
            for doc in self._tokenize(corpus.texts(TEXT_BATCH)):
                yield doc if tail is None else torch.cat([doc, tail])

    def _docs_texts(self) -> Iterator[Tensor]:
        s = self.source
        for lo in range(0, len(s), TEXT_BATCH):
            yield from self._tokenize(s[lo : lo + TEXT_BATCH])

    def _docs_docs(self) -> Iterator[Tensor]:
        for i, d in enumerate(self.source):
            if isinstance(d, str):
                raise DataError(f"source item {i} is a string but others are token ids; do not mix texts and ids")
            yield _as_doc(d, f"source item {i}")

    def _docs_iterable(self) -> Iterator[Tensor]:
        pending: list[str] = []
        for i, item in enumerate(self.source):
            if isinstance(item, str):
                pending.append(item)
                if len(pending) >= TEXT_BATCH:
                    yield from self._tokenize(pending)
                    pending = []
                continue
            if pending:
                yield from self._tokenize(pending)
                pending = []
            if isinstance(item, Tensor) and item.ndim == 2:
                for r in item:
                    yield _as_doc(r, f"generator batch {i}")
            elif isinstance(item, (list, tuple)) and item and isinstance(item[0], str):
                yield from self._tokenize(list(item))
            elif isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple, Tensor)):
                for r in item:
                    yield _as_doc(r, f"generator batch {i}")
            else:
                yield _as_doc(item, f"generator item {i}")
        if pending:
            yield from self._tokenize(pending)

    def _docs_file(self) -> Iterator[Tensor]:
        p = Path(self.source).expanduser()
        suffix = p.suffix.lower()
        if suffix == ".safetensors":
            yield from self._docs_of_tensor_file(p)
        elif suffix == ".npy":
            import numpy as np

            try:
                arr = np.load(p, allow_pickle=False)
            except ValueError as e:
                raise DataError(f"{p}: cannot read as a numpy array without pickle ({e})") from e
            yield from TokenSource(torch.from_numpy(arr))._docs_tensor()
        elif suffix in (".jsonl", ".json"):
            yield from self._docs_jsonl(p)
        else:
            yield from self._lines(p)

    def _docs_of_tensor_file(self, p: Path) -> Iterator[Tensor]:
        from ..core.io import load_tensors

        tensors = load_tensors(p)
        key = next((k for k in ("tokens", "input_ids", "token_ids") if k in tensors), None)
        if key is None:
            raise DataError(f"{p}: expected a tensor named 'tokens' or 'input_ids', found {sorted(tensors)}")
        yield from TokenSource(tensors[key])._docs_tensor()

    def _lines(self, p: Path) -> Iterator[Tensor]:
        with open(p, encoding="utf-8") as f:
            batch: list[str] = []
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    batch.append(line)
                if len(batch) >= TEXT_BATCH:
                    yield from self._tokenize(batch)
                    batch = []
            if batch:
                yield from self._tokenize(batch)

    def _docs_jsonl(self, p: Path) -> Iterator[Tensor]:
        def items() -> Iterator[Any]:
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{p}, line {n}: not valid JSON ({e})") from e
                    if isinstance(obj, dict):
                        key = next((k for k in ("text", "tokens", "input_ids") if k in obj), None)
                        if key is None:
                            raise DataError(
                                f"{p}, line {n}: expected a 'text', 'tokens' or 'input_ids' field, found {sorted(obj)}"
                            )
                        obj = obj[key]
                    if not isinstance(obj, (str, list)):
                        raise DataError(
                            f"{p}, line {n}: expected a string or a list of token ids, found {type(obj).__name__}"
                        )
                    yield obj

        yield from TokenSource(items(), tokenizer=self.tokenizer, special_tokens=self.special_tokens)._docs_iterable()

    def _tokenize(self, texts: Sequence[str]) -> Iterator[Tensor]:
        if self.tokenizer is None:
            raise DataError("a text source needs a tokenizer, and the model has none; pass token ids instead")
        ids = self.tokenizer(list(texts), add_special_tokens=self.special_tokens)["input_ids"]
        for row in ids:
            yield torch.tensor(row, dtype=torch.long)


def named_source(source: Any, seed: int = 0) -> Any:
    """``"corpus"`` -> the generated corpus, ``"task:NAME"`` -> that task; anything else unchanged."""
    if not isinstance(source, str) or Path(source).expanduser().is_file():
        return source
    if source == "corpus":
        from .corpus import Corpus

        return Corpus(seed=seed)
    if source.startswith("task:"):
        from .. import tasks

        return tasks.get(source[5:])
    return source


def token_source(model: Any, source: Any, *, seed: int = 0) -> TokenSource:
    """The :class:`TokenSource` of ``source`` for ``model``: its tokenizer, its special tokens (an encoder's
    texts get ``[CLS] ... [SEP]``), tasks rendered through its tokenizer. The one dispatch cache collection,
    SAE streaming, SAE evaluation and erasure use."""
    from ..core.kind import is_causal

    if isinstance(source, TokenSource):
        return source
    return TokenSource(
        source,
        tokenizer=getattr(model, "tokenizer", None),
        seed=seed,
        special_tokens=not is_causal(model),
        model=model,
    )


def model_rows(
    model: Any, make_source: Any, *, loop: bool = False, what: str = "the token source"
) -> Iterator[list[int]]:
    """Token rows for ``model``, one document per row: BOS by the model family's convention (an encoder's
    ``[CLS] ... [SEP]`` come from its tokenizer), a document longer than the context cut into context-sized
    rows (causal; each further row starts with BOS again) or truncated with a warning (encoder).

    ``make_source()`` returns a fresh :class:`TokenSource`; with ``loop`` a finite source is read again from its
    start when it runs out, with a :class:`~mechwork.core.errors.MechworkWarning` (the data repeats).
    """
    import warnings

    from ..core.errors import MechworkWarning
    from ..core.kind import is_causal
    from ..core.prompts import bos_id, prepends_bos

    ctx = int(model.cfg.n_ctx)
    causal = is_causal(model)
    bos = bos_id(model) if causal and prepends_bos(model) else None
    step = ctx if bos is None else ctx - 1
    passes = 0
    while True:
        ts = make_source()
        n = 0
        for doc in ts.documents():
            ids = doc.tolist()
            if bos is not None and ids[0] != bos:
                ids = [bos] + ids
            if len(ids) > ctx and not causal:
                warnings.warn(
                    f"a document of {len(ids)} tokens was truncated to the context ({ctx})",
                    MechworkWarning,
                    stacklevel=2,
                )
                ids = ids[:ctx]
            yield ids[:ctx]
            n += 1
            rest = ids[ctx:]
            for lo in range(0, len(rest), step):
                yield ([bos] if bos is not None else []) + rest[lo : lo + step]
        if ts.finite is False or not loop:
            return
        if n == 0:
            raise DataError(
                f"{what} ({ts.description}) gave no documents"
                + (" on a second pass (an iterator cannot be read twice)" if passes else "")
            )
        passes += 1
        warnings.warn(
            f"{what} ({ts.description}) ran out; reading it again from the start (pass {passes + 1}): the data "
            "repeats. Give more text or ask for fewer tokens",
            MechworkWarning,
            stacklevel=2,
        )


from .packing import Windows, pack, pad_windows  # noqa: E402  (re-exported: sources -> windows)

__all__ = ["TokenSource", "token_source", "named_source", "model_rows", "Windows", "pack", "pad_windows"]
