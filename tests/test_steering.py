"""Steering: the Steerer artefact, absolute positions under KV caching, baselines, bad input."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork import steering as S
from mechwork.core.errors import CheckpointError, ConfigError, DataError, ShapeError, SiteError


@pytest.fixture(scope="module")
def sets():
    return S.concept_sets("style", to="positive", n=32, seed=0)


@pytest.fixture(scope="module")
def diffmeans(toy_mixed, sets):
    return S.DiffMeans(sites="resid_post").fit(toy_mixed, *sets, concept="style", to="positive")


def _random_steerer(model, method="lineas", positions="all", scale=0.3, rng=0):
    g = torch.Generator().manual_seed(rng)
    sites = [f"blocks.{i}.hook_resid_post" for i in range(int(model.cfg.n_layers))]
    d = int(model.cfg.d_model)
    cfg = S.SteererConfig(
        method=method,
        sites=tuple(sites),
        shapes=tuple((d,) for _ in sites),
        d_model=d,
        model="toy-mixed",
        positions=positions,
        strength_range=(0.0, 1.0) if method == "lineas" else (-4.0, 4.0),
    )
    scales = {s: 1 + scale * torch.randn(d, generator=g) for s in sites} if method == "lineas" else {}
    biases = {s: 3 * scale * torch.randn(d, generator=g) for s in sites}
    return S.Steerer(scales, biases, cfg)


def test_strength_zero_is_exactly_identity_and_inverse_inverts(toy_mixed):
    st = _random_steerer(toy_mixed)
    toks = mechwork.core.hooks.to_tokens(toy_mixed, "the day began . it was a lovely day .")
    base = toy_mixed(toks)
    with st.apply(toy_mixed, strength=0.0):
        same = toy_mixed(toks)
    assert torch.equal(base, same)
    with st.apply(toy_mixed, strength=1.0):
        moved = toy_mixed(toks)
    assert (moved - base).abs().max() > 1e-2
    z = torch.randn(5, 7, 128)
    site = st.sites[1]
    for lam in (0.3, 1.0):
        back = st.inverse_map(site, st.map(site, z, strength=lam), strength=lam)
        assert torch.allclose(back, z, atol=1e-5)
    inv = st.inverse()
    assert torch.allclose(inv.map(site, st.map(site, z)), z, atol=1e-5)
    # composing the maps in the model: inverse hooks at the same sites undo the steerer site by site
    assert torch.allclose(st.map(site, inv.map(site, z)), z, atol=1e-5)


def test_save_load_round_trip_and_bad_files(toy_mixed, diffmeans, tmp_path):
    path = diffmeans.save(tmp_path / "dm")
    cfg = (path / "cfg.json").read_text()
    for key in ('"d_model": 128', '"method": "diffmeans"', '"positions": "all"', '"model": "toy-mixed"'):
        assert key in cfg
    back = S.load(path)
    assert back.sites == diffmeans.sites and back.config == diffmeans.config
    for s in back.sites:
        assert torch.equal(back.biases[s], diffmeans.biases[s])
    (path / "steerer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="steerer.safetensors"):
        S.load(path)
    with pytest.raises(CheckpointError, match="cfg.json"):
        S.load(tmp_path / "nowhere")


def test_refuses_other_width_missing_sites_and_bad_strength(toy_mixed, toy_induction, diffmeans):
    with pytest.raises(ShapeError, match="d_model=128"):
        diffmeans.hooks(toy_induction)
    cfg = diffmeans.config.replace(sites=("blocks.9.hook_resid_post",), shapes=((128,),))
    ghost = S.Steerer({}, {"blocks.9.hook_resid_post": torch.zeros(128)}, cfg)
    with pytest.raises(SiteError):
        ghost.hooks(toy_mixed)
    with pytest.raises(ConfigError, match="range"):
        diffmeans.hooks(toy_mixed, strength=9.0)
    with pytest.raises(ConfigError, match="range"):
        _random_steerer(toy_mixed).hooks(toy_mixed, strength=-0.5)
    with pytest.raises(ConfigError, match="absolute"):
        diffmeans.hooks(toy_mixed, positions=[-1])


def test_bad_prompt_sets(toy_mixed, sets):
    src, tgt = sets
    with pytest.raises(DataError, match="at least 4"):
        S.DiffMeans().fit(toy_mixed, src[:3], tgt)
    with pytest.raises(DataError, match="equal set sizes"):
        S.LinearAcT().fit(toy_mixed, src[:8], tgt[:10])
    with pytest.raises(DataError, match="context"):
        S.DiffMeans().fit(toy_mixed, [" ".join(["the"] * 80)] * 4, tgt[:4])
    with pytest.raises(DataError, match="empty"):
        S.DiffMeans().fit(toy_mixed, [], tgt)


def test_nan_in_loss_stops_with_the_step(toy_mixed, sets):
    src, tgt = sets
    with pytest.raises(mechwork.core.errors.NonFiniteError, match="step"):
        S.LinEAS(steps=5, lr=1e30, clip=None).fit(toy_mixed, src[:8], tgt[:8])


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_kv_cache_generation_equals_no_cache(toy_mixed_any, positions):
    st = _random_steerer(toy_mixed_any, method="diffmeans", positions=positions, scale=0.5)
    prompts = ["the day began .", "When Mary and John went to the park ,", "the day began . it was a"]
    kw = dict(steerer=st, strength=1.0, max_new_tokens=8, temperature=0.0)
    cached = S.generate(toy_mixed_any, prompts, use_cache=True, **kw)
    plain = S.generate(toy_mixed_any, prompts, use_cache=False, **kw)
    assert cached == plain
    # batched with left padding == one prompt at a time
    alone = [S.generate(toy_mixed_any, p, use_cache=True, **kw)[0] for p in prompts[:2]]
    assert alone == plain[:2] or positions != "all"  # other rules count columns of the padded layout


def test_generated_positions_reach_the_first_generated_token(toy_mixed):
    """CAA off-by-one: the map must act on the first generated token's own activations (column = prompt width)."""
    st = _random_steerer(toy_mixed, method="diffmeans", positions="generated", scale=2.0)
    prompt = "the day began ."
    width = mechwork.core.hooks.to_tokens(toy_mixed, prompt).shape[1]
    base = S.generate(toy_mixed, prompt, max_new_tokens=6, temperature=0.0)[0]
    steered = S.generate(toy_mixed, prompt, steerer=st, max_new_tokens=6, temperature=0.0)[0]
    # the first new token is predicted from prompt columns only: unchanged; the second sees column `width` steered
    assert steered[0] == base[0] and steered != base
    # the same edit given as the absolute column list [width, width+1, ...] (no IndexError under the cache)
    cols = list(range(width, width + 6))
    by_list = S.generate(toy_mixed, prompt, steerer=st, positions=cols, max_new_tokens=6, temperature=0.0)[0]
    assert by_list == steered
    # a mask narrower than the generated sequence: columns past it are not steered, nothing raises
    mask = torch.zeros(1, width + 1, dtype=torch.bool)
    mask[0, width] = True
    S.generate(toy_mixed, prompt, steerer=st, positions=mask, max_new_tokens=6, temperature=0.0)


def test_foreign_generation_loop_under_apply(toy_mixed):
    """``with steerer.apply(model): model.generate(...)`` (TransformerLens's own KV-cached loop) matches ours."""
    st = _random_steerer(toy_mixed, method="diffmeans", positions="generated", scale=2.0)
    toks = mechwork.core.hooks.to_tokens(toy_mixed, "the day began .")
    with st.apply(toy_mixed):
        out = toy_mixed.generate(toks, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
    ours = S.generate(toy_mixed, toks, steerer=st, max_new_tokens=6, temperature=0.0, stop_token=-1)[0]
    assert out[0, toks.shape[1] :].tolist() == ours


def test_linear_act_equals_its_closed_form_on_gaussians():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 6
    mu_x, sd_x = torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5
    mu_y, sd_y = torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5
    x = mu_x + sd_x * torch.randn(n, d, generator=g)
    y = mu_y + sd_y * torch.randn(n, d, generator=g)
    scale, bias = S.linear_act_map(x, y)
    # least squares on matched quantiles, computed independently
    xs, ys = x.double().sort(0).values, y.double().sort(0).values
    for j in range(d):
        A = torch.stack([xs[:, j], torch.ones(n, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(A, ys[:, j : j + 1]).solution.squeeze(1)
        assert abs(float(sol[0]) - float(scale[j])) < 1e-4 and abs(float(sol[1]) - float(bias[j])) < 1e-4
    # and the Gaussian OT map (σ_y/σ_x)(x − μ_x) + μ_y it tends to
    assert torch.allclose(scale, sd_y / sd_x, atol=0.06)
    assert torch.allclose(bias, mu_y - sd_y / sd_x * mu_x, atol=0.15)
    const = torch.zeros(n, 1)
    s0, b0 = S.linear_act_map(const, y[:, :1])
    assert float(s0) == 1.0 and float(b0) == 0.0  # a constant unit keeps the identity


def test_diffmeans_moves_the_style_rate(toy_mixed, diffmeans):
    base = S.style_rate(toy_mixed, None, n=48, seed=3)
    steered = S.style_rate(toy_mixed, diffmeans, strength=1.0, n=48, seed=3)
    away = S.style_rate(toy_mixed, diffmeans, strength=-1.0, n=48, seed=3)
    assert 0.3 <= base["rate"] <= 0.7
    assert steered["rate"] >= base["rate"] + 0.3
    assert away["rate"] <= base["rate"] - 0.2


def test_gender_concept_flips_pronoun_agreement(toy_mixed):
    src, tgt = S.concept_sets("gender", to="female", n=32, seed=0)
    assert all(" he " in f" {t} " for t in src) and all(" she " in f" {t} " for t in tgt)
    base = S.gender_rate(toy_mixed, None, to="female")
    assert base == {"rate": 0.0, "kept": 1.0}  # the model always agrees with the name
    dm = S.DiffMeans(sites="resid_post").fit(toy_mixed, src, tgt, concept="gender", to="female")
    e = S.evaluate(toy_mixed, dm, strength=1.0, n=64, n_text=32, side=False)
    # measured: rate 1.0 (male names now get "she"), kept 1.0, KL 0.10
    assert e["rate"] >= 0.9 and e["kept"] == 1.0 and e["kl"] < 0.2, e
    with pytest.raises(DataError, match="female"):
        S.concept_sets("gender", to="positive")
