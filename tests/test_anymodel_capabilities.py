"""Every capability on GPT-2, Pythia and LLaMA folders and on MiniLM: sites, SAE training on streamed text,
erasure on labelled texts, projection, SAE evaluation; each checked against a reference where one exists."""

from __future__ import annotations

import warnings

import pytest
import torch

import mechwork
from mechwork import tasks
from mechwork.core import capture, encode
from mechwork.core.errors import MechworkWarning, UnsupportedModelError

FEMALE = ["she smiled at the garden", "she walked to the river", "she read a long letter", "she found the old map"]
MALE = ["he smiled at the garden", "he walked to the river", "he read a long letter", "he found the old map"]


@pytest.fixture(params=["gpt2", "pythia", "llama", "minilm"])
def any_model(request):
    """Each non-toy model in turn (three causal folders and the headless MiniLM encoder)."""
    name = request.param
    return request.getfixturevalue("minilm" if name == "minilm" else f"{name}_model")


def test_sites_listed_and_capturable(any_model):
    names = [s.name for s in mechwork.sites(any_model) if s.kind in ("resid_post", "attn_out", "mlp_out")]
    n_layers = int(any_model.cfg.n_layers)
    assert sum(n.endswith("hook_resid_post") for n in names) == n_layers
    enc = encode(any_model, ["the cat sat", "a much longer sentence about a dog"])
    acts = capture(any_model, enc.tokens, names, attention_mask=enc.attention_mask)
    for n in names:
        assert acts[n].shape[:2] == enc.tokens.shape and torch.isfinite(acts[n]).all()


def test_sae_trains_on_streamed_text_file(any_model, tmp_path):
    import mechwork.sae as ms

    f = tmp_path / "texts.txt"
    f.write_text("\n".join(FEMALE + MALE) * 3)
    d = int(any_model.cfg.d_model)
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=2 * d, k=4),),
        site="resid_post.0",
        tokens=128 * 6,
        batch_size=128,
        lr=3e-3,
        stream_buffer=256,
        source=str(f),
        device="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ms.train(cfg, model=any_model, progress=False)
    assert any("reading it again" in str(w.message) for w in caught)  # the small file was looped over
    assert res.sae.d_in == d
    # the SAE reconstructs held-out activations better than the mean does (FVU < 1)
    metrics = ms.evaluate(res.sae, any_model, ["the cat sat on the mat", "he walked home"], n_tokens=16, batch_size=2)
    assert 0 <= metrics["fvu"] < 1.0
    if mechwork.core.model_kind(any_model).lm_head:
        assert "ce_loss_recovered" in metrics
    else:
        assert "no CE-loss" in metrics["note"]


def test_sae_stream_matches_captured_activations(gpt2_model):
    """The streamed rows are exactly the model's activations on the documents (each alone, BOS first)."""
    from mechwork.sae.activations import StreamSource

    texts = ["the cat sat on the mat", "he walked home"]
    src = StreamSource(gpt2_model, "resid_post.1", source=texts, buffer=4, forward_docs=2)
    enc = encode(gpt2_model, texts)
    got = src.sample(int(enc.mask.sum()))  # one chunk: both documents, shuffled
    ref = capture(gpt2_model, enc.tokens, ["resid_post.1"])["blocks.1.hook_resid_post"]
    want = ref[enc.mask]
    assert got.shape == want.shape
    # same rows up to the per-chunk shuffle
    assert torch.allclose(got.sum(0), want.sum(0), atol=1e-4)
    assert torch.allclose(got.norm(dim=1).sort().values, want.norm(dim=1).sort().values, atol=1e-4)


def test_erasure_on_labelled_texts(any_model):
    texts, labels = FEMALE + MALE, [0] * 4 + [1] * 4
    site = "resid_post.0"
    eraser = mechwork.erasure.fit(any_model, (texts, labels), site, "leace", positions="all")
    lab = mechwork.erasure.labelled(tasks.from_texts(any_model, texts, labels), model=any_model)
    X, z = mechwork.erasure.labelled_activations(any_model, lab, site)
    assert X.shape[0] == int(lab.mask.sum())  # padding rows are never fitted on
    Xe = eraser(X).double()
    # LEACE guarantee: no linear correlation with the concept is left (class means coincide after erasure)
    gap = Xe[z == 0].mean(0) - Xe[z == 1].mean(0)
    before = X[z == 0].double().mean(0) - X[z == 1].double().mean(0)
    assert gap.abs().max() < 1e-3 * before.abs().max()  # the pronoun was there and is gone


def test_projection_on_any_model(any_model):
    from mechwork.projection import logit_lens, project

    if not mechwork.core.model_kind(any_model).lm_head:
        with pytest.raises((UnsupportedModelError, mechwork.ConfigError), match="head"):
            logit_lens(any_model, "the cat sat")
        p = project(any_model, "neuron_in", layer=0, neuron=0, output="embed")
        assert p.top(3)
        return
    lens = logit_lens(any_model, ["the cat sat on the mat", "hello"])
    final = lens.logits[-1]
    enc = encode(any_model, ["the cat sat on the mat", "hello"])
    with torch.no_grad():
        out = any_model(enc.tokens)
    want = out[torch.arange(2), enc.last]
    assert torch.allclose(final[:, -1].float(), want.float(), atol=1e-3)  # the last layer's lens is the model


def test_task_batches_through_other_capabilities(gpt2_model):
    batch = tasks.get("gender").prompts(16, seed=0, model=gpt2_model)
    store = mechwork.cache.collect(gpt2_model, batch, "resid_pre.1", packing="pad", context=32, progress=False)
    rows = store.docs >= 0
    assert int(rows.sum()) == int(batch.mask.sum())  # every real token of every prompt, no padding
    eraser = mechwork.erasure.fit(gpt2_model, "gender", "resid_pre.1", n=64)
    assert eraser.config.task == "gender"
    with pytest.warns(MechworkWarning, match="differ across the batch"):
        mechwork.patching.activation_patch(gpt2_model, tasks.get("ioi").prompts(4, model=gpt2_model), per="position")


@pytest.mark.parametrize("name", ["gpt2", "gpt2_bridge", "pythia", "llama", "minilm"])
def test_patching_on_from_pairs_prompts(name, request):
    """Patching every position of the first residual stream restores the clean run exactly (per prompt)."""
    from mechwork.patching import activation_patch, attribution_patch

    model = request.getfixturevalue(name if name in ("minilm", "gpt2_bridge") else f"{name}_model")
    clean = ["When Mary and John went to the store, John gave a drink to", "Then Sarah and David walked to the"]
    corrupted = ["When Mary and John went to the store, Mary gave a drink to", "Then David and Sarah walked to the"]
    if name == "minilm":
        batch = tasks.from_pairs(model, clean=clean, corrupted=corrupted)
    else:
        batch = tasks.from_pairs(
            model, clean=clean, corrupted=corrupted, answers=[" Mary", " river"], wrong=[" John", " park"]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MechworkWarning)  # random weights: the gap is small
        res = activation_patch(model, batch, sites="resid_pre", per="layer")
        atp = attribution_patch(model, batch, sites="resid_pre", per="layer")
    assert res.per_prompt is not None
    want = torch.tensor(res.clean - res.corrupted)
    assert torch.allclose(res.scores[0].double(), want.double(), atol=1e-5)
    assert atp.scores.shape == res.scores.shape and torch.isfinite(atp.scores).all()
