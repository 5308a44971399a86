"""The procedurally generated language that mechwork's shipped models are trained on, with known ground truth."""

from . import vocab
from .corpus import Corpus, docs_to_batch
from .grammar import Doc, gender_doc, induction_doc, ioi_doc, ioi_pair_split, style_doc
from .tokenizer import build_tokenizer, decode_ids, encode_words, get_tokenizer, save_tokenizer, vocab_size, word_to_id

__all__ = [
    "vocab",
    "Corpus",
    "Doc",
    "docs_to_batch",
    "ioi_doc",
    "gender_doc",
    "style_doc",
    "induction_doc",
    "ioi_pair_split",
    "build_tokenizer",
    "get_tokenizer",
    "save_tokenizer",
    "encode_words",
    "decode_ids",
    "vocab_size",
    "word_to_id",
]
