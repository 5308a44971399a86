"""Token sources: texts, token tensors, tasks, files and generators turned into documents, then packed windows.

A *source* is anything that yields documents (1-D token-id sequences). :class:`TokenSource` classifies what
the user passed and iterates its documents; :func:`pack` concatenates documents into fixed-length context
windows, each row of which records the token id, the index of the document it came from and its position in
that document, so that an activation can always be traced back to its text (and, for a task, its label).

Accepted sources
----------------
- a list/tuple of strings: texts, tokenised with the model's tokenizer (no special tokens added);
- a list of token-id lists or 1-D tensors, or a 2-D integer tensor: one document per row;
- a :class:`mechwork.tasks.Task`: an endless stream of its prompts (seeded); a ``PromptBatch``: its prompts;
- a :class:`mechwork.data.Corpus`: an endless stream of generated documents, each ending with the tokenizer's EOS;
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

    def __post_init__(self) -> None:
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
        for i, d in enumerate(it):
            if d.numel():
                yield d

    def _docs_tensor(self) -> Iterator[Tensor]:
        t = self.source
        rows = t[None] if t.ndim == 1 else t
        for r in rows:
            yield _as_doc(r, "token tensor")

    def _docs_prompts(self) -> Iterator[Tensor]:
        b = self.source
        for i in range(len(b)):
            yield b.clean[i, : int(b.pos[i]) + 1].to(torch.long)

    def _docs_task(self) -> Iterator[Tensor]:
        for chunk in itertools.count():
            batch = self.source.prompts(TASK_CHUNK, seed=self.seed * 1_000_003 + chunk)
            yield from TokenSource(batch)._docs_prompts()

    def _docs_corpus(self) -> Iterator[Tensor]:
        # a fresh copy: the documents depend on the corpus's seed only, not on what the object already produced
        corpus = dataclasses.replace(self.source) if dataclasses.is_dataclass(self.source) else self.source
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

        yield from TokenSource(items(), tokenizer=self.tokenizer)._docs_iterable()

    def _tokenize(self, texts: Sequence[str]) -> Iterator[Tensor]:
        if self.tokenizer is None:
            raise DataError("a text source needs a tokenizer, and the model has none; pass token ids instead")
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        for row in ids:
            yield torch.tensor(row, dtype=torch.long)


@dataclass
class Windows:
    """A batch of packed context windows.

    Attributes
    ----------
    tokens : Int[Tensor, "batch pos"]
        Token ids; every window has ``context`` positions except possibly the last window of a finite source.
    doc : Int[Tensor, "batch pos"]
        Index of the source document each token came from (``-1`` for a BOS inserted at a window start).
    doc_pos : Int[Tensor, "batch pos"]
        Position of the token in its document (``0`` is the document's BOS when one was prepended; ``-1`` for
        inserted BOS tokens).
    """

    tokens: Tensor
    doc: Tensor
    doc_pos: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def pack(
    docs: Iterable[Tensor], context: int, *, bos_id: int | None, batch: int = 1, refill: int = 64
) -> Iterator[Windows]:
    """Pack documents into windows of ``context`` tokens, ``batch`` windows at a time.

    Parameters
    ----------
    docs : iterable of Int[Tensor, "n"]
        Documents in order.
    context : int
        Tokens per window.
    bos_id : int or None
        With an id, every document starts with BOS (prepended when its first token is not BOS) and every window
        starts with BOS (inserted when the window begins inside a document, which then continues after it).
        ``None`` concatenates documents as they are.
    batch : int
        Windows per yielded :class:`Windows`; the last yield may hold fewer, and a final window shorter than
        ``context`` is yielded on its own.

    Yields
    ------
    Windows
    """
    if context < (2 if bos_id is not None else 1):
        raise DataError(f"context must be at least {2 if bos_id is not None else 1} tokens, got {context}")
    tok_parts: list[Tensor] = []
    doc_parts: list[Tensor] = []
    pos_parts: list[Tensor] = []
    have = 0
    doc_iter = iter(docs)
    n_doc = 0
    exhausted = False
    buf_t = buf_d = buf_p = torch.empty(0, dtype=torch.long)
    out: list[tuple[Tensor, Tensor, Tensor]] = []

    def flush() -> Iterator[Windows]:
        if out:
            yield Windows(
                torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]), torch.stack([o[2] for o in out])
            )
            out.clear()

    while True:
        # refill the buffer so that at least one full window is available (or the source is exhausted)
        if buf_t.numel() < context and not exhausted:
            tok_parts, doc_parts, pos_parts = [buf_t], [buf_d], [buf_p]
            have = buf_t.numel()
            while have < context * refill:
                d = next(doc_iter, None)
                if d is None:
                    exhausted = True
                    break
                if bos_id is not None and (d.numel() == 0 or int(d[0]) != bos_id):
                    d = torch.cat([torch.tensor([bos_id], dtype=torch.long), d])
                tok_parts.append(d)
                doc_parts.append(torch.full_like(d, n_doc))
                pos_parts.append(torch.arange(d.numel(), dtype=torch.long))
                have += d.numel()
                n_doc += 1
            buf_t, buf_d, buf_p = torch.cat(tok_parts), torch.cat(doc_parts), torch.cat(pos_parts)
        if buf_t.numel() == 0:
            break
        if bos_id is not None and int(buf_t[0]) != bos_id:
            take = min(context - 1, buf_t.numel())
            w_t = torch.cat([torch.tensor([bos_id]), buf_t[:take]])
            w_d = torch.cat([torch.tensor([-1]), buf_d[:take]])
            w_p = torch.cat([torch.tensor([-1]), buf_p[:take]])
        else:
            take = min(context, buf_t.numel())
            w_t, w_d, w_p = buf_t[:take], buf_d[:take], buf_p[:take]
        if w_t.numel() < context and not exhausted:
            continue  # refill first (the buffer ran short of a full window)
        buf_t, buf_d, buf_p = buf_t[take:], buf_d[take:], buf_p[take:]
        if w_t.numel() < context:  # the last, short window goes out on its own
            yield from flush()
            out.append((w_t, w_d, w_p))
            yield from flush()
            break
        out.append((w_t, w_d, w_p))
        if len(out) == batch:
            yield from flush()
    yield from flush()


def pad_windows(
    docs: Iterable[Tensor], context: int, *, bos_id: int | None, pad_id: int, batch: int = 1
) -> Iterator[Windows]:
    """One document per window, right-padded to ``context`` tokens, ``batch`` windows at a time.

    A causal model then computes every document's activations exactly as if it ran on that document alone
    (what a probe or an eraser fitted on task prompts needs), at the cost of the padding rows. Padding rows
    have ``doc == -1`` and ``doc_pos == -1``; with ``bos_id`` every document starts with BOS.

    Raises
    ------
    DataError
        A document longer than ``context`` (BOS included): it would have to be cut or split.
    """
    if context < 1:
        raise DataError(f"context must be at least 1 token, got {context}")
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    for i, d in enumerate(docs):
        if bos_id is not None and int(d[0]) != bos_id:
            d = torch.cat([torch.tensor([bos_id], dtype=torch.long), d])
        n = int(d.numel())
        if n > context:
            raise DataError(
                f"document {i} has {n} tokens{' (BOS included)' if bos_id is not None else ''} but packing='pad' puts one "
                f"document in a window of context={context}; pass a larger context or packing='concat'"
            )
        tok = torch.full((context,), pad_id, dtype=torch.long)
        tok[:n] = d
        doc = torch.full((context,), -1, dtype=torch.long)
        doc[:n] = i
        pos = torch.full((context,), -1, dtype=torch.long)
        pos[:n] = torch.arange(n)
        rows.append((tok, doc, pos))
        if len(rows) == batch:
            yield Windows(*(torch.stack(c) for c in zip(*rows)))
            rows = []
    if rows:
        yield Windows(*(torch.stack(c) for c in zip(*rows)))
