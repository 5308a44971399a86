"""The generated language and the task API: determinism, ground truth, equal shapes, held-out pairs."""

from __future__ import annotations

import random

import pytest
import torch

import mechwork
from mechwork.data import Corpus, decode_ids, get_tokenizer, vocab_size
from mechwork.data import grammar as G
from mechwork.data import vocab as V
from mechwork.data.tokenizer import TOKENIZER_DIR, build_tokenizer
from mechwork.models.zoo import VOCAB_SIZE


def test_vocabulary_is_fixed_and_shipped_tokenizer_matches():
    assert vocab_size() == VOCAB_SIZE == len(set(V.all_words()))
    assert not (V.STYLE_WORDS[0] & V.STYLE_WORDS[1])
    shipped = get_tokenizer()
    fresh = build_tokenizer()
    assert shipped.get_vocab() == fresh.get_vocab()
    assert (TOKENIZER_DIR / "tokenizer.json").is_file()
    ids = shipped("When Mary and John went to the store ,")["input_ids"]
    assert decode_ids(ids) == "When Mary and John went to the store ,".split()


def test_corpus_is_deterministic_and_mixed():
    a, b = Corpus(seed=3).docs(200), Corpus(seed=3).docs(200)
    assert [d.words for d in a] == [d.words for d in b]
    kinds = {d.kind for d in a}
    assert kinds == {"ioi", "gender", "style", "induction"}
    assert all(len(d.words) == len(d.tags) for d in a)
    tokens, mask = Corpus(seed=3).batch(16, 64)
    assert tokens.shape[0] == 16 and tokens.shape[1] <= 64 and mask.dtype == torch.bool


def test_ioi_held_out_pairs_never_in_training_docs():
    train, test = G.ioi_pair_split()
    assert not (train & test) and 0.18 < len(test) / (len(train) + len(test)) < 0.22
    for d in Corpus(seed=0, mix={"ioi": 1.0}).docs(2000):
        assert frozenset((d.factors["io"], d.factors["s"])) in train
    assert len({len(t.split()) for t in G.IOI_TEMPLATES}) == 1  # equal length: positions align


def test_gender_and_style_ground_truth():
    rng = random.Random(0)
    for _ in range(200):
        d = G.gender_doc(rng)
        prons = [w for w, t in zip(d.words, d.tags) if t == "gender:pronoun"]
        assert prons and all(p == V.PRONOUNS[V.GENDER[d.factors["name"]]] for p in prons)
        s = G.style_doc(rng)
        styled = [w for w in s.words if w in V.STYLE_WORDS[0] | V.STYLE_WORDS[1]]
        assert styled and all(w in V.STYLE_WORDS[s.factors["style"]] for w in styled)


def test_induction_docs_randomise_period_and_start():
    rng = random.Random(1)
    docs = [G.induction_doc(rng) for _ in range(300)]
    assert len({d.factors["segment_len"] for d in docs}) > 5 and len({d.factors["start"] for d in docs}) > 5
    for d in docs[:50]:
        p, L = d.factors["prefix_len"], d.factors["segment_len"]
        assert d.words[p : p + L] == d.words[p + L : p + 2 * L]


@pytest.mark.parametrize("name", ["ioi", "induction", "gender", "style"])
def test_task_batches(name):
    task = mechwork.tasks.get(name)
    a, b = task.prompts(32, seed=5), task.prompts(32, seed=5)
    assert torch.equal(a.clean, b.clean) and not torch.equal(a.clean, task.prompts(32, seed=6).clean)
    assert a.clean.shape == a.corrupted.shape and (a.clean[:, 0] == 1).all()
    assert a.answer.shape == a.wrong.shape == a.pos.shape == (32,)
    assert (a.answer != a.wrong).all()
    assert (a.clean != a.corrupted).any(1).all()
    if name in ("gender", "style"):
        assert a.labels is not None and set(a.labels.tolist()) == {0, 1}
    logits = torch.zeros(32, a.clean.shape[1], vocab_size())
    assert task.metric(logits, a).shape == (32,)
    sub = a.select([0, 2])
    assert len(sub) == 2 and torch.equal(sub.clean[1], a.clean[2])


def test_ioi_prompt_semantics():
    b = mechwork.tasks.get("ioi").prompts(50, seed=0, split="test")
    _, test = G.ioi_pair_split()
    for i in range(50):
        words = b.str_tokens(i)
        io, s = decode_ids([int(b.answer[i]), int(b.wrong[i])])
        assert frozenset((io, s)) in test
        assert words.count(s) == 2 and words.count(io) == 1 and words[-1] == "to"
        assert s not in b.str_tokens(i, corrupted=True)[-5:]  # ABC corruption replaced the second S


def test_bad_task_requests():
    with pytest.raises(mechwork.MechworkError, match="ioi"):
        mechwork.tasks.get("iio")
    with pytest.raises(mechwork.DataError):
        mechwork.tasks.get("ioi").prompts(0)
    with pytest.raises(mechwork.ShapeError):
        b = mechwork.tasks.get("ioi").prompts(4)
        mechwork.tasks.get("ioi").metric(torch.zeros(3, 5, 7), b)
