"""Tiny Hugging Face model folders with real tokenizers, built offline in seconds (random weights).

Used by the session fixtures in ``conftest.py`` (``gpt2_folder``, ``pythia_folder``, ``llama_folder``,
``weights_only_folder``, ``minilm_path``). Each folder is what a user has on disk: ``config.json``,
``model.safetensors`` and the tokenizer files written by ``save_pretrained``.

- GPT-2: byte-level BPE (``Ġ`` marks a leading space), BOS = EOS = ``<|endoftext|>``, no pad token.
- Pythia (GPT-NeoX): byte-level BPE, rotary positions, parallel attention + MLP.
- LLaMA: BPE with the ``▁`` metaspace convention, ``<s>`` / ``</s>`` / ``<unk>``, RMSNorm, gated MLP.
- weights-only: the GPT-2 weights without any tokenizer file.

The tokenizers are trained on a few hundred sentences: the generated language's task sentences (so its names,
pronouns and adjectives are mostly single tokens, as common words are in real vocabularies) plus general English
(so some rarer names split into several tokens, which the tasks must handle).
"""

from __future__ import annotations

import random
from pathlib import Path

GENERAL = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Scientists measured the temperature of the ocean every morning.",
    "The museum opened a new exhibition about ancient maps and coins.",
    "She wrote a long letter to her grandmother about the summer.",
    "Rain fell on the quiet village while the children slept.",
    "He repaired the old bicycle with a borrowed wrench.",
    "The committee approved the budget after a long debate.",
    "Birds migrate south when the days grow short and cold.",
    "Our neighbours planted tomatoes, beans and sunflowers this year.",
    "The library lends books, films and music to everyone.",
    "Engineers tested the bridge with heavy trucks before it opened.",
    "Bartholomew and Genevieve visited Xiomara in Reykjavik.",
    "Thaddeus met Ignatius near the harbour at dawn.",
]


def training_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Sentences for training the test tokenizers (deterministic)."""
    from mechwork.data import Corpus

    texts = Corpus(seed=seed).texts(n)
    rng = random.Random(seed)
    out = [t.replace(" ,", ",").replace(" .", ".") for t in texts] + GENERAL * 3
    rng.shuffle(out)
    return out


def _byte_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    return tk


def _metaspace_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tk.train_from_iterator(texts, trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tk


def gpt2_tokenizer(folder: Path, texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(texts, 600), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    tok.save_pretrained(str(folder))
    return tok


def build_gpt2(folder: Path, texts: list[str], *, tokenizer: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = gpt2_tokenizer(folder if tokenizer else folder / "_tok", texts)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(str(folder))
    if not tokenizer:
        import shutil

        shutil.rmtree(folder / "_tok")
    return folder


def _save_random(folder: Path, tok, config_cls, model_cls, *, seed: int, **config) -> Path:
    """Save ``tok`` and a randomly initialised ``model_cls(config_cls(...))`` sized to the tokenizer."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **config)
    model_cls(cfg).eval().save_pretrained(str(folder))
    return folder


def build_pythia(folder: Path, texts: list[str], *, seed: int = 0) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(texts, 500), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    return _save_random(
        folder, tok, GPTNeoXConfig, GPTNeoXForCausalLM, seed=seed, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=256, max_position_embeddings=64, rotary_pct=0.25,
        tie_word_embeddings=False,
    )  # fmt: skip


def build_llama(folder: Path, texts: list[str], *, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_metaspace_bpe(texts, 500), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return _save_random(
        folder, tok, LlamaConfig, LlamaForCausalLM, seed=seed, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip


def build_all(root: Path) -> dict[str, Path]:
    """Every test folder under ``root`` (``gpt2``, ``pythia``, ``llama``, ``weights_only``)."""
    texts = training_texts()
    return {
        "gpt2": build_gpt2(root / "gpt2", texts),
        "pythia": build_pythia(root / "pythia", texts),
        "llama": build_llama(root / "llama", texts),
        "weights_only": build_gpt2(root / "weights_only", texts, tokenizer=False, seed=1),
    }
