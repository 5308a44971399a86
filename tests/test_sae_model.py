"""SAEs on the shipped models, both backends: splicing, evaluation, training from a store and from a stream,
and the shipped SAEs against their cards (latent statistics and dashboards: test_sae_latents.py)."""

from __future__ import annotations

import pytest
import torch

import mechwork
import mechwork.sae as ms
from mechwork.core.errors import ShapeError, SiteError
from mechwork.sae import shipped


@pytest.fixture(scope="module")
def small_sae(toy_mixed):
    """A quickly trained SAE streamed from toy-mixed at resid_post.1."""
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=256, k=16),),
        model="toy-mixed",
        site="resid_post.1",
        tokens=1024 * 30,
        batch_size=1024,
        lr=3e-3,
        stream_buffer=8192,
    )
    return ms.train(cfg, model=toy_mixed, progress=False).sae


def test_splice_replaces_the_site_and_error_term_restores_it(toy_mixed_any, small_sae):
    model = toy_mixed_any
    tokens = model.to_tokens(["When Mary and John went to the store , John gave a drink to"])
    clean = model(tokens)
    seen = {}

    def grab(act, hook=None):
        seen["x"] = act.detach().clone()

    with mechwork.core.hooked(model, [("resid_post.1", grab)]):
        model(tokens)
    with ms.splice(model, small_sae):
        spliced = model(tokens)
    with mechwork.core.hooked(model, [("resid_post.1", lambda a, hook=None: small_sae(seen["x"]))]):
        manual = model(tokens)
    assert torch.allclose(spliced, manual, atol=1e-5)
    assert not torch.allclose(spliced, clean, atol=1e-3)
    with ms.splice(model, small_sae, error=True):
        assert torch.allclose(model(tokens), clean, atol=1e-4)
    assert torch.allclose(model(tokens), clean)  # hooks removed


def test_splice_rejects_mismatched_sites(toy_mixed, small_sae):
    with pytest.raises(SiteError, match="trained on blocks.1.hook_resid_post"):
        with ms.splice(toy_mixed, small_sae, "resid_post.2"):
            pass
    with ms.splice(toy_mixed, small_sae, "resid_post.2", strict=False):
        pass
    with pytest.raises(ShapeError, match="d_in=128 but site blocks.1.mlp.hook_post"):
        with ms.splice(toy_mixed, small_sae, "mlp_post.1", strict=False):
            pass
    with pytest.raises(SiteError, match="no site"):
        with ms.splice(toy_mixed, small_sae, "resid_post.9", strict=False):
            pass


def test_evaluate_agrees_across_backends(toy_mixed, toy_mixed_bridge, small_sae):
    a = ms.evaluate(small_sae, toy_mixed, n_tokens=1500, seed=3)
    b = ms.evaluate(small_sae, toy_mixed_bridge, n_tokens=1500, seed=3)
    for key in ("fvu", "l0", "ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_sae"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert a["ce_zero"] > a["ce_sae"] > a["ce_clean"]
    assert 0 < a["ce_loss_recovered"] <= 1.0 and a["l0"] == pytest.approx(16.0)
    assert sum(a["latent_freq_hist"]["counts"]) == small_sae.d_sae


def test_train_from_store_and_bad_store_input(toy_mixed):
    from mechwork.cache import collect
    from mechwork.data import Corpus

    store = collect(toy_mixed, Corpus(5), ["resid_post.0", "mlp_post.0"], n_tokens=8192, progress=False)
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=128, k=8),), site="resid_post.0", batch_size=512, lr=3e-3, tokens=8192 * 4
    )
    res = ms.train(cfg, store, progress=False)  # four epochs over the store, a fresh permutation each
    assert res.steps == 64 and res.sae.d_in == 128
    assert res.sae.meta["site"] == "blocks.0.hook_resid_post"
    ev = ms.evaluate(res.sae, None, store, "resid_post.0", n_tokens=4096)
    assert ev["fvu"] < 0.6
    with pytest.raises(ShapeError, match=r"d_in=128 but the data \(the store\) has width 512"):
        ms.train(cfg.replace(saes=(ms.SAEConfig(d_in=128, d_sae=64, k=4),), site="mlp_post.0"), store, progress=False)
    with pytest.raises(SiteError, match="no site"):
        ms.train(cfg.replace(site="resid_post.3"), store, progress=False)
    st = ms.latent_stats(res.sae, store, n_tokens=2048)
    ctx = st.contexts(int(st.freq().argmax()))
    assert ctx and all(isinstance(t, str) for t in ctx[0]["tokens"])


def test_stream_training_resumes_exactly(toy_mixed, tmp_path):
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=64, k=4),),
        model="toy-mixed",
        site="resid_post.0",
        tokens=256 * 12,
        batch_size=256,
        lr=3e-3,
        stream_buffer=1024,
        checkpoint_every=3,
        out=str(tmp_path / "a"),
    )
    full = ms.train(cfg, model=toy_mixed, progress=False)
    ms.train(cfg.replace(out=str(tmp_path / "b")), model=toy_mixed, progress=False, stop_at_step=7)
    resumed = ms.train(cfg.replace(out=str(tmp_path / "b")), model=toy_mixed, progress=False, resume=True)
    for p, q in zip(full.sae.parameters(), resumed.sae.parameters()):
        assert torch.equal(p, q)
    loaded = ms.load(tmp_path / "b" / "saes" / "topk_k4_w64_s0")
    assert loaded.meta["model"] == "toy-mixed" and loaded.meta["tokens"] == 256 * 12


@pytest.mark.parametrize("site", shipped.SITES)
def test_shipped_saes_load_and_meet_their_card(toy_mixed_any, site):
    path = shipped.path("toy-mixed", site)
    if not path.is_dir():
        pytest.fail(f"shipped SAE missing: {path}")
    sae = ms.load(path)
    card = ms.read_card(path)
    assert card["model_sha256"] == shipped.model_sha256(), (
        "toy-mixed was retrained after this SAE was: retrain the shipped SAEs with `python -m mechwork.sae.shipped`"
    )
    ev = ms.evaluate(sae, toy_mixed_any, n_tokens=shipped.CHECK_TOKENS, seed=shipped.EVAL_SEED)
    assert ev["fvu"] <= 0.1 and ev["ce_loss_recovered"] >= 0.9 and ev["dead_fraction"] < 0.05, ev
    recorded = card["eval"]
    assert ev["fvu"] <= recorded["fvu"] * 1.1 + 0.005
    assert ev["ce_loss_recovered"] >= recorded["ce_loss_recovered"] - 0.02
    assert ev["l0"] == pytest.approx(recorded["l0"])
