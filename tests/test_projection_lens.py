"""Logit lens and tuned lens: trajectory statistics, the tuned lens beating the logit lens, the lens artefact."""

from __future__ import annotations

import copy

import pytest
import torch

import mechwork
from mechwork.core.errors import CheckpointError, ConfigError
from mechwork.data.corpus import Corpus
from mechwork.projection import logit_lens
from mechwork.projection.tuned import TunedLens, compare_lenses, train_tuned_lens


@pytest.fixture(scope="session")
def toy_lens(toy_mixed):
    return train_tuned_lens(toy_mixed, steps=100, batch_size=8, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def held_out():
    return Corpus(seed=99, split="test").batch(16, 64)  # (tokens, mask of real tokens)


def test_logit_lens_statistics(toy_mixed_any):
    m = toy_mixed_any
    r = logit_lens(m, "When Mary and John went to the store , John gave a drink to", pos=None)
    toks = mechwork.core.to_tokens(m, "When Mary and John went to the store , John gave a drink to")
    final = m(toks)[0].log_softmax(-1)
    torch.testing.assert_close(r.log_probs()[-1, 0], final, rtol=1e-4, atol=1e-4)
    kl = r.kl_to_final()
    assert kl.shape == (5, 1, toks.shape[1]) and float(kl[-1].abs().max()) < 1e-5
    assert (kl[:-1] > 0).all()
    ent = r.entropy()
    manual = -(final.exp() * final).sum(-1)
    torch.testing.assert_close(ent[-1, 0], manual, rtol=1e-4, atol=1e-4)
    assert int(r.rank()[-1].max()) == 0  # the answer is the final top-1
    mary = m.to_single_token("Mary")
    p = r.prob(torch.tensor([mary]))
    torch.testing.assert_close(p[-1, 0, -1], final[-1, mary].exp(), rtol=1e-4, atol=1e-5)
    assert r.top_tokens(m, 1)[-1][0][0] == "Mary"
    ce = r.cross_entropy()
    assert torch.isnan(ce[:, 0, -1]).all() and torch.isfinite(ce[:, 0, :-1]).all()
    s = r.summary()
    assert list(s.layer) == ["embed", "L0", "L1", "L2", "L3"] and s.kl_to_final.iloc[-1] < 1e-5
    assert "<table" in r._repr_html_() and "LensResult" in repr(r)


def test_logit_lens_prompt_batch_answer_position(toy_mixed):
    b = mechwork.tasks.get("ioi").prompts(8, seed=1)
    r = logit_lens(toy_mixed, b)
    assert torch.equal(r.positions[:, 0], b.pos)
    # IOI is solved by the last layers: the answer's rank falls to 0 by the end
    assert float(r.rank(b.answer)[-1].float().mean()) == 0.0
    assert float(r.rank(b.answer)[0].float().mean()) > 5


def _masked_kl(res, mask):
    kl = res.kl_to_final()[:, mask]
    return kl.mean(-1)


def test_tuned_lens_beats_logit_lens(toy_mixed, toy_lens, held_out):
    tokens, mask = held_out
    kl_logit = _masked_kl(logit_lens(toy_mixed, tokens, pos=None), mask)
    kl_tuned = _masked_kl(toy_lens(toy_mixed, tokens, pos=None), mask)
    assert (kl_tuned[:-1] < kl_logit[:-1]).all(), (kl_logit, kl_tuned)
    assert float(kl_tuned[-1]) == pytest.approx(0.0, abs=1e-6)
    table = compare_lenses(toy_mixed, tokens[:4], toy_lens)
    assert list(table.columns[:3]) == ["layer", "kl_to_final_logit", "kl_to_final_tuned"]


def test_zero_lens_is_the_logit_lens(toy_mixed, held_out):
    tokens, _ = held_out
    zero = TunedLens.for_model(toy_mixed)
    torch.testing.assert_close(
        zero(toy_mixed, tokens[:2], pos=None).logits, logit_lens(toy_mixed, tokens[:2], pos=None).logits
    )


def test_tuned_lens_artefact(toy_mixed, toy_induction, toy_lens, tmp_path):
    path = toy_lens.save(tmp_path / "lens")
    assert (path / "cfg.json").is_file() and (path / "lens.safetensors").is_file()
    back = TunedLens.load(path, model=toy_mixed)
    torch.testing.assert_close(back.weight, toy_lens.weight)
    assert back.meta["model_digest"] == toy_lens.meta["model_digest"] and back.cfg == toy_lens.cfg
    with pytest.raises(ConfigError, match="cannot read this model"):
        TunedLens.load(path, model=toy_induction)
    other = copy.deepcopy(toy_mixed)
    with torch.no_grad():
        other.W_U.add_(0.01)
    with pytest.raises(ConfigError, match="differ"):
        toy_lens(other, "the day began")
    toy_lens(other, "the day began", strict=False)
    data = (path / "lens.safetensors").read_bytes()
    (path / "lens.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="lens.safetensors"):
        TunedLens.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        TunedLens.load(tmp_path / "nothing")


def test_tuned_lens_from_cache(toy_mixed, tmp_path):
    from mechwork.cache import collect
    from mechwork.projection.lens import resid_names

    tokens, _ = Corpus(seed=3).batch(8, 64)
    store = collect(toy_mixed, tokens, resid_names(toy_mixed), progress=False)
    lens = train_tuned_lens(toy_mixed, store=store, steps=5, batch_size=64, progress=False)
    assert lens.meta["steps_done"] == 5 and lens.meta["tokens_seen"] == 5 * 64
    assert float(lens.weight.detach().abs().sum()) > 0
    small = collect(toy_mixed, tokens, ["resid_post.0"], progress=False)
    with pytest.raises(mechwork.core.DataError, match="lacks"):
        train_tuned_lens(toy_mixed, store=small, steps=2, progress=False)


def test_lens_bad_input(toy_mixed):
    with pytest.raises(mechwork.core.DataError, match="empty"):
        logit_lens(toy_mixed, [])
    with pytest.raises(mechwork.core.DataError, match="context"):
        logit_lens(toy_mixed, torch.ones(1, 100, dtype=torch.long))
    with pytest.raises(ConfigError, match="steps"):
        train_tuned_lens(toy_mixed, steps=0)


def test_logit_lens_position_tensor(toy_mixed):
    b = mechwork.tasks.get("ioi").prompts(4, seed=2)
    r = logit_lens(toy_mixed, b.clean, pos=b.pos - 1)
    assert torch.equal(r.positions[:, 0], b.pos - 1)
    r = logit_lens(toy_mixed, b, pos="answer")
    assert torch.equal(r.positions[:, 0], b.pos)
