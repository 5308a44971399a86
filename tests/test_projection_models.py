"""Projection on models that are not the toys: GPT-2 / Pythia / LLaMA folders with real tokenizers (shared fixtures
in conftest), and the headless MiniLM encoder (refused where an unembedding is needed, served where only W_E is)."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.core.errors import ConfigError, UnsupportedModelError
from mechwork.projection import copying_score, logit_lens, project
from mechwork.projection.align import align
from mechwork.projection.tuned import TunedLens, train_tuned_lens

TEXTS = ["The quick brown fox jumps over the lazy dog.", "She wrote a long letter to her grandmother."] * 10


def test_gpt2_bpe_projection_and_lens(gpt2_model, gpt2_bridge, tmp_path):
    model = gpt2_model
    r = logit_lens(model, ["The quick brown fox jumps", "She wrote a long letter to her grandmother"], pos=None)
    assert r.logits.shape[0] == 3 and torch.isfinite(r.kl_to_final()).all()
    assert r.real is not None and not bool(r.real[0].all())  # the shorter prompt is right-padded
    assert float(r.summary().kl_to_final.iloc[-1]) == pytest.approx(0.0, abs=1e-5)
    tops = r.top_tokens(model, 3)
    assert all(isinstance(t, str) for row in tops for t, _ in row)
    p = project(model, "ov", layer=1, head=2)
    the = " the"  # a byte-level BPE token with its leading space, as mechwork.core.str_tokens writes it
    assert p.top(3, row=the) == p.top(3, row=model.to_single_token(the))
    assert -1 <= copying_score(model, 1, 2) <= 1
    with pytest.raises(ConfigError, match="not a single token"):
        p.top(3, row=" thequickbrownfox")
    lens = train_tuned_lens(model, TEXTS, steps=3, batch_size=4, progress=False)
    lens.save(tmp_path / "lens")
    back = TunedLens.load(tmp_path / "lens", model=gpt2_bridge)  # same weights on the other backend
    assert back(gpt2_bridge, "The quick brown fox").logits.shape[0] == 3


def test_rotary_and_rmsnorm_models(pythia_model, llama_model):
    from mechwork.projection import prev_token_score

    for m in (pythia_model, llama_model):
        r = logit_lens(m, "The quick brown fox jumps over the lazy dog.")
        assert torch.isfinite(r.logits).all() and float(r.kl_to_final()[-1].abs().max()) < 1e-4
        assert project(m, "qk", layer=0, head=0).top_rows(2)[0].shape == (int(m.cfg.d_vocab), 2)
        with pytest.raises(ConfigError, match="positions"):
            prev_token_score(m, 0, 0)


def test_alignment_refuses_other_vocabulary(gpt2_model, toy_mixed):
    with pytest.raises(ConfigError, match="different vocabularies"):
        align(toy_mixed, gpt2_model)


def test_tuned_lens_refuses_other_model(gpt2_model, toy_mixed):
    lens = TunedLens.for_model(toy_mixed)
    with pytest.raises(ConfigError, match="cannot read"):
        lens(gpt2_model, "The cat")


def test_toy_corpus_default_refused_on_other_vocabulary(gpt2_model):
    with pytest.raises(mechwork.core.DataError, match="source"):
        train_tuned_lens(gpt2_model, steps=1, progress=False)


def test_headless_encoder_refused_where_unembedding_needed(minilm):
    with pytest.raises(UnsupportedModelError, match="no trained LM head"):
        logit_lens(minilm, "interpretability of transformers")
    with pytest.raises(UnsupportedModelError, match="no trained LM head"):
        project(minilm, "ov", layer=0, head=0)
    with pytest.raises(UnsupportedModelError, match="no trained LM head"):
        TunedLens.for_model(minilm)
    with pytest.raises(UnsupportedModelError, match="no trained LM head"):
        project(minilm, torch.randn(384))
    # input-side readings need only W_E; outputs can be read through the tied embedding
    qk = project(minilm, "qk", layer=0, head=0)
    assert qk.shape == (30522, 30522) and len(qk.top(5, row="cat")) == 5
    assert project(minilm, "neuron_in", layer=0, neuron=3).shape == (1, 30522)
    ov = project(minilm, "ov", layer=0, head=0, output="embed")
    assert torch.isfinite(torch.tensor([v for _, v in ov.top(3, row="cat")])).all()
