"""Prompts, tokens, models and tasks on models beyond the toy language: GPT-2 BPE, Pythia, LLaMA (metaspace),
a weights-only folder and the real all-MiniLM-L6-v2 encoder (loaded headless)."""

from __future__ import annotations

import warnings

import pytest
import torch

import mechwork
from mechwork import tasks
from mechwork.core import capture, encode, model_kind, run_with_hooks, str_tokens
from mechwork.core.errors import DataError, MechworkWarning, UnsupportedModelError

SENTENCES = ["the cat sat on the mat", "a dog barked loudly at the moon tonight", "hello"]


# --- prompts -> tokens -----------------------------------------------------------------------------------


def test_encode_follows_each_model_family(gpt2_model, pythia_model, llama_model, minilm):
    g = encode(gpt2_model, "When Mary")
    assert g.tokens[0, 0] == gpt2_model.tokenizer.bos_token_id  # GPT-2: <|endoftext|> first
    assert str_tokens(gpt2_model, g.tokens[0]) == ["<|endoftext|>", "When", " Mary"]
    p = encode(pythia_model, "When Mary")
    assert str_tokens(pythia_model, p.tokens[0]) == ["When", " Mary"]  # Pythia: no BOS by convention
    ll = encode(llama_model, "When Mary")
    assert str_tokens(llama_model, ll.tokens[0]) == ["<s>", " When", " Mary"]  # metaspace keeps the space
    m = encode(minilm, ["When Mary", "the cat sat on the mat"])
    rows = str_tokens(minilm, m.tokens)
    assert rows[0][:4] == ["[CLS]", "when", "mary", "[SEP]"] and rows[1][0] == "[CLS]"
    assert m.attention_mask is not None and m.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert m.last.tolist() == [2, 6]  # the token before [SEP]


def test_encode_inputs_and_guards(gpt2_model, toy_mixed):
    ids = encode(gpt2_model, "When Mary and John").tokens
    assert torch.equal(encode(gpt2_model, ids).tokens, ids)
    assert torch.equal(encode(gpt2_model, {"input_ids": ids}).tokens, ids)
    ragged = encode(gpt2_model, [[1, 2, 3], [4, 5]])
    assert ragged.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and ragged.last.tolist() == [2, 1]
    with pytest.raises(DataError, match="context"):
        encode(gpt2_model, "word " * 80)
    with pytest.warns(MechworkWarning, match="truncated"):
        assert encode(gpt2_model, "word " * 80, truncate=True).tokens.shape[1] == 64
    with pytest.raises(DataError, match="vocabulary"):
        encode(gpt2_model, torch.tensor([[0, 10_000]]))
    with pytest.raises(DataError, match="empty"):
        encode(gpt2_model, [])
    with pytest.warns(MechworkWarning, match="'zebra'"):  # unknown word of the word-level toy vocabulary
        encode(toy_mixed, "When Mary saw a zebra")


def test_str_tokens_roundtrip(gpt2_model, llama_model, minilm):
    text = "When Mary and John went to the store, John gave a drink to Mary"
    assert "".join(str_tokens(gpt2_model, text)[1:]) == text  # byte-level BPE: exact
    assert "".join(str_tokens(llama_model, text)[1:]).strip() == text
    words = [s for s in str_tokens(minilm, "unbelievable tokenization")[1:-1]]
    assert any(w.startswith("##") for w in words)  # WordPiece continuations stay marked


def test_weights_only_folder(weights_only_folder, gpt2_folder):
    with pytest.warns(MechworkWarning, match="no tokenizer"):
        model = mechwork.load_model(str(weights_only_folder), device="cpu")
    assert model.tokenizer is None
    with pytest.raises(DataError, match="tokenizer"):
        encode(model, "hello")
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(str(weights_only_folder)).eval()
    ids = torch.tensor([[3, 17, 250, 9]])
    with torch.no_grad():
        got, want = model(ids), ref(ids).logits
    # processed weights: logits equal up to a per-position constant (centred unembedding)
    assert torch.allclose(got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True), atol=1e-4)
    assert str_tokens(model, ids[0]) == ["<3>", "<17>", "<250>", "<9>"]
    store = mechwork.cache.collect(model, torch.randint(0, 600, (3, 16)), "resid_post.0", progress=False)
    assert store.n_tokens == 48 and not store.manifest.bos  # no tokenizer, no BOS: the ids as given
    pairs = tasks.from_pairs(model, clean=ids, corrupted=torch.tensor([[3, 18, 250, 9]]), answers=[5], wrong=[6])
    assert pairs.answer.tolist() == [5]
    with pytest.raises(mechwork.CheckpointError, match="tokenizer"):
        mechwork.load_model(str(weights_only_folder), device="cpu", backend="bridge")


# --- model kinds, headless loading -----------------------------------------------------------------------


def test_minilm_is_headless_and_matches_hugging_face(minilm, minilm_path):
    from transformers import AutoModel

    kind = model_kind(minilm)
    assert (kind.causal, kind.lm_head, kind.name) == (False, False, "headless-encoder")
    enc = encode(minilm, SENTENCES)
    assert enc.attention_mask is not None
    hf = AutoModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        ref = hf(input_ids=enc.tokens, attention_mask=enc.attention_mask, output_hidden_states=True).hidden_states
    names = [f"blocks.{i}.hook_resid_post" for i in range(6)]
    acts = capture(minilm, enc.tokens, names, attention_mask=enc.attention_mask)
    real = enc.mask
    for i, n in enumerate(names):
        assert (acts[n] - ref[i + 1])[real].abs().max() < 1e-4, n
    out = run_with_hooks(minilm, enc.tokens, attention_mask=enc.attention_mask)  # the output: last hidden state
    assert (out - ref[-1])[real].abs().max() < 1e-4
    # without the mask the padded rows would differ: the mask really is used
    bare = capture(minilm, enc.tokens, names[-1:])[names[-1]]
    assert (bare - ref[-1])[real].abs().max() > 1e-2
    assert torch.isnan(minilm(enc.tokens)).all()  # the missing MLM head is NaN, never random numbers
    with pytest.raises(UnsupportedModelError, match="no trained language-model head"):
        run_with_hooks(minilm, enc.tokens, return_type="logits")
    with pytest.raises(UnsupportedModelError):
        tasks.get("gender").evaluate(minilm, n=4)


def test_checkpoint_without_lm_head_loads_headless(tmp_path, llama_folder):
    from transformers import AutoTokenizer, LlamaForCausalLM

    full = LlamaForCausalLM.from_pretrained(str(llama_folder))
    folder = tmp_path / "llama-base"
    full.model.save_pretrained(str(folder))  # a LlamaModel checkpoint: no lm_head
    AutoTokenizer.from_pretrained(str(llama_folder)).save_pretrained(str(folder))
    cfg = (folder / "config.json").read_text().replace('"LlamaModel"', '"LlamaForCausalLM"')
    (folder / "config.json").write_text(cfg)  # a config that claims a head the weights lack
    with pytest.warns(MechworkWarning, match="no language-model head"):
        model = mechwork.load_model(str(folder), device="cpu")
    assert not model_kind(model).lm_head
    ids = encode(model, "When Mary").tokens
    assert torch.isnan(model(ids)).all()
    h = run_with_hooks(model, ids)
    assert h.shape == (1, ids.shape[1], 64) and torch.isfinite(h).all()


# --- tasks through any tokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "pythia", "llama"])
def test_ioi_renders_intended_words(name, request):
    model = request.getfixturevalue(f"{name}_model")
    batch = tasks.get("ioi").prompts(12, seed=3, model=model)
    assert batch.vocab != "mechwork-toy" and batch.tokenizer is model.tokenizer
    for i, info in enumerate(batch.info):
        assert str_tokens(model, [batch.answer[i]])[0].strip() == info["io"]
        assert str_tokens(model, [batch.wrong[i]])[0].strip() == info["s"]
        n = int(batch.mask[i].sum())
        diff = (batch.clean[i, :n] != batch.corrupted[i, :n]).nonzero().flatten().tolist()
        assert len(diff) == 1  # the second subject mention, one token, same length
        assert str_tokens(model, [batch.clean[i, diff[0]]])[0].strip() == info["s"]
    toy = tasks.get("ioi").prompts(12, seed=3)  # the same draw in the toy vocabulary
    assert batch.texts()[0].replace(",", " ,") in " ".join(toy.str_tokens(0)[1:]) or batch.texts()[0]


def test_tasks_on_minilm_use_cls_sep(minilm):
    batch = tasks.get("gender").prompts(6, seed=0, model=minilm)
    for i in range(len(batch)):
        toks = str_tokens(minilm, batch.clean[i][batch.mask[i]])
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
        assert int(batch.pos[i]) == len(toks) - 2
    assert batch.labels is not None
    with pytest.raises(UnsupportedModelError, match="causal"):
        tasks.get("induction").prompts(4, model=minilm)


def test_toy_batch_refused_on_other_tokenizer(gpt2_model):
    from mechwork.patching import activation_patch

    toy = tasks.get("ioi").prompts(4)
    with pytest.raises(DataError, match="rendered for the tokenizer"):
        activation_patch(gpt2_model, toy, sites="resid_pre", per="layer")


# --- your own prompts ------------------------------------------------------------------------------------

CLEAN = ["When Mary and John went to the store, John gave a drink to", "Then Sarah and David walked to the"]
CORRUPT = ["When Mary and John went to the store, Mary gave a drink to", "Then David and Sarah walked to the"]


def test_from_pairs_metric_matches_hugging_face(gpt2_folder, gpt2_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batch = tasks.from_pairs(
        gpt2_model, clean=CLEAN, corrupted=CORRUPT, answers=[" Mary", " river"], wrong=[" John", " park"]
    )
    assert batch.attention_mask is not None and not batch.aligned
    m = batch.metric_fn(run_with_hooks(gpt2_model, batch.clean), batch)
    hf = AutoModelForCausalLM.from_pretrained(str(gpt2_folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(gpt2_folder))
    for i, (text, a, w) in enumerate(zip(CLEAN, [" Mary", " river"], [" John", " park"])):
        ids = torch.tensor([[tok.bos_token_id] + tok(text)["input_ids"]])
        with torch.no_grad():
            last = hf(ids).logits[0, -1]
        want = last[tok(a)["input_ids"][0]] - last[tok(w)["input_ids"][0]]
        assert abs(float(m[i]) - float(want)) < 1e-4  # padding does not leak into the metric


def test_from_pairs_errors(gpt2_model, minilm):
    with pytest.raises(DataError, match="pair 0 has"):
        tasks.from_pairs(
            gpt2_model, clean=["When Mary left"], corrupted=["When Bartholomew left"], answers=[" a"], wrong=[" the"]
        )
    with pytest.raises(DataError, match="tokens for this tokenizer"):
        tasks.from_pairs(gpt2_model, clean=CLEAN[:1], corrupted=CORRUPT[:1], answers=[" Bartholomew"], wrong=[" John"])
    with pytest.raises(DataError, match="no metric"):
        tasks.from_pairs(gpt2_model, clean=CLEAN, corrupted=CORRUPT)
    with pytest.raises(UnsupportedModelError, match="language-model head"):
        tasks.from_pairs(minilm, clean=["a cat"], corrupted=["a dog"], answers=["sat"], wrong=["ran"])


def test_patching_on_minilm_with_embedding_metric(minilm):
    from mechwork.patching import activation_patch

    batch = tasks.from_pairs(
        minilm,
        clean=["the cat sat on the mat", "a dog barked at night"],
        corrupted=["the dog sat on the mat", "a cat barked at night"],
    )
    res = activation_patch(minilm, batch, sites="resid_pre", per="position")
    assert res.clean == pytest.approx(1.0, abs=1e-5)  # cosine of each clean embedding with itself
    assert res.corrupted < 0.99
    # patching the only changed position at the first layer restores the clean run exactly
    assert float(res.scores[0, 2]) == pytest.approx(res.clean - res.corrupted, abs=1e-4)
    assert res.scores[0, torch.arange(res.scores.shape[1]) != 2].abs().max() < 1e-6


def test_from_texts_labels(minilm, gpt2_model):
    b = tasks.from_texts(gpt2_model, SENTENCES, labels=[0, 1, 0])
    assert b.labels.tolist() == [0, 1, 0] and b.attention_mask is not None
    assert b.texts() == SENTENCES
    with pytest.raises(DataError, match="one entry per text"):
        tasks.from_texts(minilm, SENTENCES, labels=[0, 1])


def test_near_zero_gap_warns(gpt2_model):
    from mechwork.patching import activation_patch

    batch = tasks.from_pairs(gpt2_model, clean=CLEAN[:1], corrupted=CLEAN[:1], answers=[" Mary"], wrong=[" John"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        activation_patch(gpt2_model, batch, sites="resid_pre", per="layer")
    assert any("nearly coincide" in str(w.message) for w in caught)


def test_registered_task_renders_for_any_tokenizer(gpt2_model):
    from dataclasses import dataclass

    from mechwork.core.errors import ConfigError

    @dataclass
    class Greeting(tasks.Task):
        name: str = "greeting"

        def _items(self, rng, n, split):
            out = []
            for _ in range(n):
                a, b = rng.sample(["Mary", "John", "Sarah", "David"], 2)
                words = ["Then", a, "and", b, "went", "to", "the", "store", ",", b, "gave", "a", "drink", "to"]
                bad = words[:9] + [a] + words[10:]
                out.append({"clean": words, "corrupted": bad, "answer": a, "wrong": b})
            return out

    tasks.register("greeting", Greeting)
    try:
        batch = tasks.get("greeting").prompts(6, seed=1, model=gpt2_model)
        assert batch.aligned  # one template: every position is the same slot
        assert all(t.startswith("Then ") and t.endswith(" gave a drink to") for t in batch.texts())
        out = tasks.get("greeting").evaluate(gpt2_model, n=6, seed=1)
        with torch.no_grad():
            want = tasks.logit_diff(gpt2_model(batch.clean), batch).mean()
        assert out["metric"] == pytest.approx(float(want), abs=1e-5)
        with pytest.raises(ConfigError, match="already registered"):
            tasks.register("greeting", type("Other", (tasks.Task,), {}))
        with pytest.raises(ConfigError, match="Task subclass"):
            tasks.register("bad", dict)  # type: ignore[arg-type]
    finally:
        tasks._REGISTRY.pop("greeting", None)
