"""The word-level tokenizer of the generated language.

Built with ``tokenizers`` (WordLevel model, whitespace split) and wrapped in ``PreTrainedTokenizerFast`` so
that TransformerLens's ``to_tokens``, ``to_str_tokens`` and ``generate`` work. Token ids are fixed by
:func:`mechwork.data.vocab.all_words`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DataError
from . import vocab as V


@functools.lru_cache(maxsize=1)
def word_to_id() -> dict[str, int]:
    return {w: i for i, w in enumerate(V.all_words())}


@functools.lru_cache(maxsize=1)
def id_to_word() -> tuple[str, ...]:
    return tuple(V.all_words())


def vocab_size() -> int:
    return len(id_to_word())


def encode_words(words: Sequence[str], *, bos: bool = True, eos: bool = False) -> list[int]:
    """Token ids of a list of words (each word is one token); unknown words raise DataError."""
    table = word_to_id()
    try:
        ids = [table[w] for w in words]
    except KeyError as e:
        raise DataError(f"word {e.args[0]!r} is not in the mechwork vocabulary") from None
    return ([table[V.BOS]] if bos else []) + ids + ([table[V.EOS]] if eos else [])


def decode_ids(ids: Sequence[int] | torch.Tensor) -> list[str]:
    words = id_to_word()
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return [words[i] for i in ids]


def build_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` for the vocabulary (in memory)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(word_to_id(), unk_token=V.UNK))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=V.BOS,
        eos_token=V.EOS,
        pad_token=V.PAD,
        unk_token=V.UNK,
        model_max_length=10**6,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(folder: str | Path) -> Path:
    """Write the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(folder))
    return folder


#: the tokenizer files shipped with the package (``save_tokenizer(TOKENIZER_DIR)`` regenerates them)
TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Any:
    """The tokenizer, loaded from the package's files.

    TransformerLens re-loads a tokenizer from its ``name_or_path`` and ``TransformerBridge.boot_native``
    needs a tokenizer loaded from disk, so the shipped folder is used rather than an in-memory object.
    """
    from transformers import PreTrainedTokenizerFast

    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        save_tokenizer(TOKENIZER_DIR)
    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))


def load_tokenizer(folder: str | Path, *, required: tuple[str, ...] = (), auto: bool = False) -> Any:
    """Load a tokenizer folder, checked; every failure is a :class:`~mechwork.CheckpointError` naming the file.

    The JSON files are read through :func:`mechwork.core.io.read_json` first (regular files, bounded size,
    valid JSON objects), so ``tokenizers``/``transformers`` never see a FIFO, a truncated or a foreign file.
    Every special token the tokenizer declares must be in its vocabulary, and those named in ``required``
    (``"bos"``, ``"eos"``, ``"pad"``, ``"unk"``) must be declared: a tokenizer missing them is refused here,
    not at its first use.

    Parameters
    ----------
    folder : str or Path
        Holds ``tokenizer.json`` (fast tokenizers) and usually ``tokenizer_config.json``.
    required : tuple of str
        Special tokens that must be declared.
    auto : bool
        Load with ``AutoTokenizer`` (Hugging Face folders: slow-only formats such as ``vocab.txt`` too) instead of
        ``PreTrainedTokenizerFast``.
    """
    from ..core.errors import CheckpointError
    from ..core.io import read_json

    folder = Path(folder)
    files = [folder / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    for i, f in enumerate(files):
        if i == 0 and not auto or f.exists() or f.is_symlink():
            obj = read_json(f, what="tokenizer file", max_bytes=256 << 20)
            if not isinstance(obj, dict) or (i == 0 and not isinstance(obj.get("model"), dict)):
                raise CheckpointError(f"tokenizer file {f} is not a tokenizer JSON object: foreign or corrupt")
    try:
        if auto:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder))
        else:
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception, KeyError, TypeError...
        names = ", ".join(f.name for f in sorted(folder.iterdir()) if f.is_file()) if folder.is_dir() else "nothing"
        raise CheckpointError(
            f"cannot load the tokenizer in {folder} (files: {names}; {type(e).__name__}: {e}): one of these files is "
            "corrupt or foreign"
        ) from e
    where = folder / "tokenizer_config.json"
    for name in required:
        if getattr(tok, f"{name}_token", None) is None:
            raise CheckpointError(f"tokenizer {where} declares no {name} token; the model needs one")
    vocab = tok.get_vocab()
    for name, token in (tok.special_tokens_map or {}).items():
        for t in token if isinstance(token, list) else [token]:
            if str(t) not in vocab:
                raise CheckpointError(f"tokenizer {where}: special token {name}={str(t)!r} is not in the vocabulary")
    return tok
