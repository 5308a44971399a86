"""Activation caching on models beyond the toy language, checked against Hugging Face's own forward."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mechwork
from mechwork.cache import collect
from mechwork.core.errors import ConfigError

SENTENCES = [
    "the cat sat on the mat",
    "a dog barked loudly at the moon tonight",
    "hello",
    "sentence embeddings average the token states",
]


def _hf_reference(folder, texts, tokenizer_kwargs, model_cls):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = model_cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    out = []
    for t in texts:  # each document alone: what a padded window must reproduce
        ids = tok(t, return_tensors="pt", **tokenizer_kwargs)
        with torch.no_grad():
            r = hf(**ids, output_hidden_states=True, output_attentions=True)
        out.append((ids["input_ids"][0], r))
    return out


def test_minilm_pad_cache_equals_hugging_face(minilm, minilm_path):
    from transformers import AutoModel

    sites = [f"resid_post.{i}" for i in range(6)] + ["pattern.0", "pattern.5"]
    store = collect(minilm, SENTENCES, sites, context=16, batch_size=3, progress=False)
    assert store.manifest.packing == "pad"  # the encoder default: one sentence per window, masked padding
    ref = _hf_reference(minilm_path, SENTENCES, {}, AutoModel)
    docs, doc_pos, toks = store.docs, store.doc_pos, store.tokens
    for d, (ids, r) in enumerate(ref):
        rows = (docs == d).nonzero().flatten()
        assert torch.equal(toks[rows], ids)  # [CLS] ... [SEP] exactly as the tokenizer defines them
        assert torch.equal(doc_pos[rows], torch.arange(len(ids)))
        for i in range(6):
            got = store[f"blocks.{i}.hook_resid_post"][rows]
            assert (got - r.hidden_states[i + 1][0]).abs().max() < 1e-4, (d, i)
        for layer in (0, 5):
            pat = store[f"blocks.{layer}.attn.hook_pattern"][rows]  # [pos, head, key] (keys padded to context)
            want = r.attentions[layer][0].transpose(0, 1)  # [q, head, k]
            assert (pat[..., : len(ids)] - want).abs().max() < 1e-4
            assert pat[..., len(ids) :].abs().max() < 1e-6  # no attention to padding
    with pytest.raises(ConfigError, match="attend to each other"):
        collect(minilm, SENTENCES, "resid_post.0", packing="concat", progress=False)


@pytest.mark.parametrize("name", ["gpt2", "pythia", "llama"])
def test_causal_cache_equals_hugging_face(name, request):
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(f"{name}_folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mechwork.load_model(str(folder), device="cpu", backend="bridge", processing=False)
    n_layers = int(model.cfg.n_layers)
    sites = [f"resid_pre.{i}" for i in range(n_layers)]
    store = collect(model, SENTENCES, sites, context=32, batch_size=2, packing="pad", progress=False)
    bos = json.loads((folder / "config.json").read_text())["bos_token_id"]
    prepend = bool(model.cfg.default_prepend_bos)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    for d, text in enumerate(SENTENCES):
        ids = torch.tensor([([bos] if prepend else []) + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hs = hf(ids, output_hidden_states=True).hidden_states
        rows = (store.docs == d).nonzero().flatten()
        assert torch.equal(store.tokens[rows], ids[0])
        for i in range(n_layers):
            assert (store[f"blocks.{i}.hook_resid_pre"][rows] - hs[i][0]).abs().max() < 1e-4, (name, d, i)


def test_corpus_by_name_and_jsonl(gpt2_model, tmp_path):
    store = collect(gpt2_model, "corpus", "resid_post.0", n_tokens=256, context=32, progress=False)
    assert store.n_tokens == 256
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in SENTENCES))
    s2 = collect(gpt2_model, str(f), "resid_post.0", context=32, progress=False)
    s3 = collect(gpt2_model, SENTENCES, "resid_post.0", context=32, progress=False)
    assert torch.equal(s2.tokens, s3.tokens)
