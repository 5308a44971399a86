"""Steering on a non-toy model: a GPT-2 folder with a real byte-level BPE tokenizer (random weights), both backends;
and the refusal on the MiniLM encoder that has no language-model head."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork import steering as S
from mechwork.core.errors import MechworkError


@pytest.fixture(scope="module")
def gpt2_bpe_folder(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("gpt2-bpe")
    texts = S.style_texts(150, style=None, seed=1) + S.neutral_texts(150, seed=1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(fast), n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_steering_a_gpt2_bpe_folder(gpt2_bpe_folder, backend, tmp_path):
    model = mechwork.load_model(gpt2_bpe_folder, backend=backend)
    src, tgt = S.concept_sets("style", to="positive", n=8, seed=0)
    assert len(model.to_str_tokens(src[0])) != len(src[0].split()) + 1  # really multi-token words
    dm = S.DiffMeans(sites="resid_post").fit(model, src, tgt, concept="style", to="positive")
    lin = S.LinEAS(steps=5).fit(model, src, tgt)
    assert dm.sites == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"] and lin.config.d_model == 32
    prompts = ["the day began .", "When Mary and John went to the park ,"]
    for positions in ("all", "generated"):
        kw = dict(steerer=dm, strength=4.0, positions=positions, max_new_tokens=6, temperature=0.0)
        assert S.generate(model, prompts, use_cache=True, **kw) == S.generate(model, prompts, use_cache=False, **kw)
    r = S.style_rate(model, dm, n=4, max_new_tokens=6)
    assert set(r) == {"rate", "word_rate", "styled"}
    f = S.fluency(model, dm, strength=4.0, n=8)
    assert f["kl"] > 0 and f["ce"] > 0
    side = S.side_effects(model, dm, strength=4.0)  # tasks rendered through the BPE tokenizer where possible
    assert "induction_loss" in side and side != S.side_effects(model, None)
    back = S.load(lin.save(tmp_path / "lin"))
    with back.apply(model, strength=0.0):
        toks = mechwork.core.hooks.to_tokens(model, prompts[0])
        assert torch.equal(model(toks), model(toks))


def test_minilm_encoder_is_refused(minilm):
    model = minilm
    src, tgt = ["a happy day"] * 4, ["a sad day"] * 4
    with pytest.raises(MechworkError, match="language-model head|no trained"):
        S.LoFiT(steps=1).fit(model, src, tgt)
    with pytest.raises(MechworkError, match="language-model head|no trained"):
        S.generate(model, "hello")
    with pytest.raises(MechworkError, match="language-model head|no trained"):
        S.fluency(model, None, texts=["hello there"] * 4)
