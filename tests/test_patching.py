"""Patching mechanics on small random models: peer equality with transformer_lens.patching on both backends,
the exactness axioms (linear model, IG completeness, LRP forward invariance, the rules' coefficients), the fast
resume-from-layer/position path against plain forwards, and every bad input of the issue."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mechwork
from mechwork.core.errors import ConfigError, DataError, MechworkError, NonFiniteError, ShapeError, SiteError
from mechwork.patching import (
    activation_patch,
    attribution_patch,
    faithfulness,
    integrated_gradients,
    lrp,
    quadrature,
    relevance_patch,
)

torch.set_num_threads(1)


def assert_equals_transformer_lens(ours, ref):
    """``ours`` (a PatchResult) equals TransformerLens's scores to 1e-6, or to 4 float32 ulps of the metric's
    magnitude where that is larger: each score is a difference of metric values computed by two different float32
    programs, and at |metric| ~ 7.5 (IOI logit differences) one ulp is already 9.5e-7 (observed 1.55e-6)."""
    scale = max(abs(ours.clean), abs(ours.corrupted), float(ref.abs().max()))
    atol = max(1e-6, 4 * torch.finfo(torch.float32).eps * scale)
    torch.testing.assert_close(ours.scores, ref, atol=atol, rtol=0)


def _pair(overrides: dict | None = None, *, bridge: bool = True, seed: int = 0):
    """A random toy-mixed-shaped model on both backends with identical (LN-perturbed) weights."""
    from mechwork.data import get_tokenizer
    from mechwork.models import backends
    from mechwork.models.zoo import ENTRIES

    cfg = {**ENTRIES["toy-mixed"].model.tl_dict(), "n_layers": 3, "n_ctx": 32, **(overrides or {})}
    tok = get_tokenizer()
    torch.manual_seed(seed)
    raw = backends.build_hooked(cfg, None, tok, processing=False)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in raw.state_dict().items():
        v = v.clone()
        if k.endswith((".w", ".b")) and v.is_floating_point():  # LayerNorm weights away from 1/0
            v += (0.3 if k.endswith(".w") else 0.1) * torch.randn(v.shape, generator=gen)
        state[k] = v
    cpu = torch.device("cpu")
    hooked = backends.finalize(backends.build_hooked(cfg, state, tok), device=cpu, dtype=None)
    if not bridge:
        return hooked, None
    return hooked, backends.finalize(backends.build_bridge(cfg, state, tok), device=cpu, dtype=None)


@pytest.fixture(scope="module")
def models():
    return _pair()


@pytest.fixture(scope="module")
def ioi():
    task = mechwork.tasks.get("ioi")
    return task, task.prompts(6, seed=0)


def _tl(fn, model, task, batch, *, noise: bool = False):
    """transformer_lens.patching result as a metric change (what mechwork reports)."""
    base, src = (batch.clean, batch.corrupted) if noise else (batch.corrupted, batch.clean)
    _, cache = model.run_with_cache(src)

    def metric(logits):
        return task.metric(logits, batch).mean()

    with torch.no_grad():
        m_base = metric(model(base)).item()
    return fn(model, base, cache, metric).cpu() - m_base


TL_CASES = [  # (TL function, mechwork sites, per, permutation of TL's axes into ours)
    ("get_act_patch_resid_pre", "resid_pre", "position", None),
    ("get_act_patch_attn_out", "attn_out", "position", None),
    ("get_act_patch_mlp_out", "mlp_out", "position", None),
    ("get_act_patch_attn_head_out_by_pos", "z", "head_position", None),
    ("get_act_patch_attn_head_out_all_pos", "z", "head", None),
    ("get_act_patch_attn_head_v_by_pos", "v", "head_position", None),
    ("get_act_patch_attn_head_k_all_pos", "k", "head", None),
    ("get_act_patch_block_every", "block", "position", None),
]


@pytest.mark.parametrize("fn,sites,per,perm", TL_CASES, ids=[c[0] for c in TL_CASES])
def test_activation_patch_equals_transformer_lens(models, ioi, backend, fn, sites, per, perm):
    import transformer_lens.patching as tlp

    model = models[0] if backend == "hooked" else models[1]
    task, batch = ioi
    ours = activation_patch(model, batch, task, sites=sites, per=per)
    ref = _tl(getattr(tlp, fn), model, task, batch)
    assert ours.scores.shape == ref.shape
    assert_equals_transformer_lens(ours, ref)
    assert ours.cost["forwards"] < ref.numel()  # batched: far fewer forwards than cells


def test_pattern_and_resid_mid_and_noise_equal_transformer_lens(models, ioi):
    import transformer_lens.patching as tlp

    model = models[0]
    task, batch = ioi
    ours = activation_patch(model, batch, task, sites="pattern", per="head_position")
    ref = _tl(tlp.get_act_patch_attn_head_pattern_by_pos, model, task, batch)  # [layer, head, dest]
    assert_equals_transformer_lens(ours, ref.permute(0, 2, 1))
    ours = activation_patch(model, batch, task, sites="resid_mid", per="position")
    assert_equals_transformer_lens(ours, _tl(tlp.get_act_patch_resid_mid, model, task, batch))
    ours = activation_patch(model, batch, task, sites="z", per="head", direction="noise")
    ref = _tl(tlp.get_act_patch_attn_head_out_all_pos, model, task, batch, noise=True)
    assert_equals_transformer_lens(ours, ref)
    assert ours.baseline == pytest.approx(ours.clean)


def test_fast_path_equals_full_forwards():
    """Resuming from a cached layer and cached keys/values, and computing a patched layer only over the changed
    positions (rotary, RMSNorm, gated MLP), gives what plain forwards give; so does IG's resumed path."""
    model, _ = _pair(
        {
            "positional_embedding_type": "rotary",
            "normalization_type": "RMS",
            "gated_mlp": True,
            "act_fn": "silu",
            "rotary_dim": 32,
        },
        bridge=False,
    )
    task = mechwork.tasks.get("induction", prefix_len=3, segment_len=5)
    batch = task.prompts(5, seed=1)
    for sites, per in (
        (["resid_pre", "z", "mlp_out", "resid_post"], "position"),
        (["q", "pattern", "z.2"], "head_position"),
    ):
        fast = activation_patch(model, batch, task, sites=sites, per=per)
        slow = activation_patch(model, batch, task, sites=sites, per=per, resume=False)
        torch.testing.assert_close(fast.scores, slow.scores, atol=2e-5, rtol=1e-4, equal_nan=True)
        assert fast.cost["full_forward_equivalents"] < slow.cost["full_forward_equivalents"] / 2
    ap = activation_patch(model, batch, task, sites="z", per="head")
    kept = ap.top(4)
    for nodes in (kept, ap.nodes()[:1]):
        a = faithfulness(model, batch, task, nodes, universe=ap)
        b = faithfulness(model, batch, task, nodes, universe=ap, resume=False)
        assert a.metric == pytest.approx(b.metric, abs=2e-5) and a.empty == pytest.approx(b.empty, abs=2e-5)
    ig_fast = integrated_gradients(model, batch, task, sites="z.1", per="head", steps=4)
    ig_slow = integrated_gradients(model, batch, task, sites="z.1", per="head", steps=4, resume=False)
    torch.testing.assert_close(ig_fast.scores, ig_slow.scores, atol=2e-5, rtol=1e-4)


def test_gradient_methods_agree_across_backends(models, ioi):
    task, batch = ioi
    for fn, kw in (
        (attribution_patch, {}),
        (relevance_patch, {}),
        (relevance_patch, {"rules": ["LN-rule", "AH-rule"]}),
        (integrated_gradients, {"steps": 8}),
    ):
        a = fn(models[0], batch, task, sites=["resid_pre", "z", "mlp_out"], per="position", **kw)
        b = fn(models[1], batch, task, sites=["resid_pre", "z", "mlp_out"], per="position", **kw)
        torch.testing.assert_close(a.scores, b.scores, atol=2e-5, rtol=1e-4)


def test_linear_model_attribution_equals_activation_patching(ioi):
    """No LayerNorm, attention only, sites of the last layer: the logit difference is linear in them."""
    task, batch = ioi
    model, _ = _pair(
        {"normalization_type": None, "attn_only": True, "n_layers": 2, "initializer_range": 0.15}, bridge=False
    )
    for sites, per, direction in (
        ("z.1", "head_position", "denoise"),
        ("attn_out.1", "position", "denoise"),
        ("resid_post.1", "position", "noise"),
    ):
        ap = activation_patch(model, batch, task, sites=sites, per=per, direction=direction)
        assert float(ap.scores.abs().max()) > 1e-3
        for fn in (attribution_patch, relevance_patch, integrated_gradients):
            r = fn(model, batch, task, sites=sites, per=per, direction=direction)
            torch.testing.assert_close(r.scores, ap.scores, atol=1e-5, rtol=1e-4)
    # one layer earlier the attention of layer 1 is non-linear in z.0: the first-order estimate is not exact
    ap = activation_patch(model, batch, task, sites="z.0", per="head")
    assert float((attribution_patch(model, batch, task, sites="z.0", per="head").scores - ap.scores).abs().max()) > 1e-4


def test_integrated_gradients_completeness(models, ioi):
    task, batch = ioi
    ig = integrated_gradients(models[0], batch, task, sites=["resid_pre", "mlp_out.1"], per="position", steps=64)
    gap = ig.clean - ig.corrupted
    for layer in range(3):  # the whole residual stream at a layer carries all of the clean-corrupted difference
        assert float(ig.scores[0, layer].sum()) == pytest.approx(gap, rel=0.01)
    comp = ig.info["completeness"]
    assert all(c["relative_error"] < 0.01 for c in comp.values())
    ap = activation_patch(
        models[0], batch, task, sites="mlp_out.1", per="layer"
    )  # the site's endpoint = patching it all
    assert comp["mlp_out.1"]["exact"] == pytest.approx(float(ap.scores[0]), rel=1e-4, abs=1e-6)
    assert float(ig.scores[1, 1].sum()) == pytest.approx(float(ap.scores[0]), rel=0.01, abs=1e-4)
    for rule in ("midpoint", "left", "trapezoid"):
        a, w = quadrature(16, rule)
        assert float(w.sum()) == pytest.approx(1.0) and 0 <= float(a.min()) <= float(a.max()) <= 1


def _run_all(model, tokens):
    store = {}

    def keep(t, hook):
        store[hook.name] = t.detach().clone()

    names = [s.name for s in mechwork.sites(model) if s.gate is None]
    with model.hooks(fwd_hooks=[(n, keep) for n in names]):
        logits = model(tokens)
    return logits.detach(), store


@pytest.mark.parametrize("which", ["hooked", "bridge", "gated"])
def test_lrp_rules_keep_every_forward_value(models, ioi, which):
    _, batch = ioi
    if which == "gated":
        model, _ = _pair({"normalization_type": "RMS", "gated_mlp": True, "act_fn": "silu"}, bridge=False)
    else:
        model = models[0] if which == "hooked" else models[1]
    rules = ["layernorm", "identity", "half", "attention"]
    logits, acts = _run_all(model, batch.clean)
    with lrp(model, rules):
        logits2, acts2 = _run_all(model, batch.clean)
    assert torch.equal(logits, logits2)
    assert acts.keys() == acts2.keys() and all(torch.equal(acts[k], acts2[k]) for k in acts)


def _grads(model, batch, task, names, rules, extra=()):
    """Gradients of the summed metric at ``names`` with LRP ``rules`` (and ``extra`` forward hooks) on."""
    probes = {}

    def probe(t, hook):
        probes[hook.name] = torch.zeros_like(t, requires_grad=True)
        return t + probes[hook.name]

    from mechwork.patching import lrp_hooks

    before, after = lrp_hooks(model, rules) if rules else ([], [])
    with model.hooks(fwd_hooks=list(extra) + before + [(n, probe) for n in names] + after):
        m = task.metric(model(batch.clean), batch)
    grads = torch.autograd.grad(m.sum(), [probes[n] for n in names])
    return dict(zip(names, grads))


def test_ln_rule_freezes_the_scale(models, ioi):
    """With the LN-rule, the gradient at the final residual is the (centred) unembedding direction / scale."""
    task, batch = ioi
    model = models[0]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    g = _grads(model, batch, task, [last], ["layernorm"])[last]
    _, cache = model.run_with_cache(batch.clean, names_filter=["ln_final.hook_scale"])
    u = model.W_U[:, batch.answer] - model.W_U[:, batch.wrong]  # [d_model, batch]
    u = u - u.mean(0, keepdim=True)
    rows = torch.arange(len(batch))
    expected = u.T / cache["ln_final.hook_scale"][rows, batch.pos]
    torch.testing.assert_close(g[rows, batch.pos], expected, atol=1e-5, rtol=1e-4)
    plain = _grads(model, batch, task, [last], [])[last]
    assert float((plain - g).abs().max()) > 1e-3  # without the rule the scale's derivative contributes


def test_identity_and_half_rule_coefficients(ioi):
    task, batch = ioi
    model, _ = _pair({"normalization_type": "RMS", "gated_mlp": True, "act_fn": "silu"}, bridge=False)
    p = "blocks.1.mlp."
    names = [p + "hook_pre", p + "hook_pre_linear", p + "hook_post"]
    g = _grads(model, batch, task, names, ["identity", "half"])
    _, cache = model.run_with_cache(batch.clean, names_filter=names)
    pre, lin = cache[p + "hook_pre"], cache[p + "hook_pre_linear"]
    act = torch.nn.functional.silu(pre)
    pre_s = pre + ((pre == 0).float() + pre.sign()) * 1e-6
    torch.testing.assert_close(g[p + "hook_pre_linear"], 0.5 * act * g[p + "hook_post"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(g[p + "hook_pre"], 0.5 * lin * act / pre_s * g[p + "hook_post"], atol=1e-6, rtol=1e-3)
    dense, _ = _pair(bridge=False)
    q = "blocks.0.mlp."
    gd = _grads(dense, batch, task, [q + "hook_pre", q + "hook_post"], ["identity"])
    _, c = dense.run_with_cache(batch.clean, names_filter=[q + "hook_pre", q + "hook_post"])
    x = c[q + "hook_pre"]
    ratio = c[q + "hook_post"] / (x + ((x == 0).float() + x.sign()) * 1e-6)
    torch.testing.assert_close(gd[q + "hook_pre"], gd[q + "hook_post"] * ratio, atol=1e-6, rtol=1e-4)


def test_ah_rule_equals_detached_pattern(models, ioi):
    """Detaching q and k (how the AH-rule is applied, bridge-safe) = detaching the pattern on HookedTransformer."""
    task, batch = ioi
    model = models[0]
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid"]
    ours = _grads(model, batch, task, names, ["attention"])
    detach_pattern = [(lambda n: n.endswith("hook_pattern"), lambda t, hook: t.detach())]
    ref = _grads(model, batch, task, names, [], extra=detach_pattern)
    for n in names:
        torch.testing.assert_close(ours[n], ref[n], atol=1e-6, rtol=1e-5)


def test_bridge_refuses_read_only_sites(models, ioi):
    task, batch = ioi
    with pytest.raises(SiteError, match="read-only"):
        activation_patch(models[1], batch, task, sites="pattern", per="head")
    with pytest.raises(SiteError, match="does not reach"):
        attribution_patch(models[1], batch, task, sites="resid_mid", per="position")
    activation_patch(models[1], batch, task, sites=["resid_pre", "resid_post", "attn_out", "mlp_out"], per="layer")


def test_result_api(models, ioi, tmp_path):
    task, batch = ioi
    r = activation_patch(models[0], batch, task, sites="block", per="position")
    assert r.axes == ("component", "layer", "pos") and r.labels["component"] == ["resid_pre", "attn_out", "mlp_out"]
    assert r.labels["pos"][0] == "0 <bos>"
    df = r.to_dataframe()
    assert len(df) == r.scores.numel() and {"component", "layer", "pos", "score", "normalized", "node"} <= set(
        df.columns
    )
    top = r.top(5)
    assert [t.score for t in top] == sorted([t.score for t in top], key=abs, reverse=True)
    assert abs(top[0].score) == pytest.approx(float(r.scores.abs().max()))
    torch.testing.assert_close(r.normalized() * r.gap, r.scores)
    other = attribution_patch(models[0], batch, task, sites="block", per="position")
    a, b = r.scores.flatten().double(), other.scores.flatten().double()
    ok = ~(a.isnan() | b.isnan())
    expected = float(torch.corrcoef(torch.stack([a[ok], b[ok]]))[0, 1])
    assert r.correlation(other) == pytest.approx(expected, abs=1e-9) and abs(expected) < 0.999
    assert r.correlation(other, normalized=True) == pytest.approx(expected * (1 if r.gap * other.gap > 0 else -1))
    assert r.per_prompt.shape == (len(batch),) + r.shape and float(r.sem().nanmean()) >= 0
    fig = r.plot()
    html = fig.to_html(include_plotlyjs=False)
    assert "&lt;bos&gt;" in html and "<bos>" not in html  # token labels escaped
    path = r.save(tmp_path / "r.json")
    back = mechwork.patching.PatchResult.load(path)
    assert torch.equal(back.scores, r.scores) and back.axes == r.axes and back.top(1)[0] == top[0]
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(mechwork.CheckpointError):
        mechwork.patching.PatchResult.load(tmp_path / "bad.json")
    heads = activation_patch(models[0], batch, task, sites="z", per="head_position")
    assert heads.plot() is not None and str(heads.top(1)[0]).startswith("z.")


def test_faithfulness_bounds(models, ioi):
    task, batch = ioi
    ap = activation_patch(models[0], batch, task, sites="z", per="head")
    full = faithfulness(models[0], batch, task, ap.nodes())
    assert full.value == pytest.approx(1.0, abs=1e-5) and full.n_universe == 12
    none = faithfulness(models[0], batch, task, [], universe=ap)
    assert none.metric == pytest.approx(none.empty)
    one = faithfulness(models[0], batch, task, ["L0H1"])
    assert one.nodes[0].head == 1 and one.nodes[0].layer == 0
    mean = faithfulness(models[0], batch, task, ap.top(3), ablation="mean")
    assert mean.ablation == "mean" and mean.empty != pytest.approx(full.metric)


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_batches(models, ioi):
    task, batch = ioi
    model = models[0]
    short = dataclasses.replace(batch)
    short.corrupted = batch.corrupted[:, :-1]
    with pytest.raises(ShapeError, match="differ in shape"):
        activation_patch(model, short, task)
    with pytest.raises(DataError, match="PromptBatch"):
        attribution_patch(model, (batch.clean, batch.corrupted), task)
    big = dataclasses.replace(batch)
    big.clean = batch.clean.clone()
    big.clean[0, 1] = 10_000
    with pytest.raises(DataError, match="vocabulary"):
        relevance_patch(model, big, task)


def test_bad_metrics(models, ioi):
    task, batch = ioi
    model = models[0]
    with pytest.raises(ShapeError, match="one value per prompt"):
        activation_patch(model, batch, lambda logits, b: task.metric(logits, b).mean())
    with pytest.raises(ShapeError, match="one value per prompt"):
        attribution_patch(model, batch, lambda logits, b: logits[:, -1, :2])
    with pytest.raises(ShapeError, match="tensor"):
        integrated_gradients(model, batch, lambda logits, b: 1.0, steps=2)
    with pytest.raises(NonFiniteError, match="NaN"):
        relevance_patch(model, batch, lambda logits, b: task.metric(logits, b) * float("nan"))

    def nan_when_patched(logits, b):  # finite on the clean/corrupted runs, NaN on patched rows
        m = task.metric(logits, b)
        return m / 0 * 0 if logits.shape[0] != len(batch) else m

    with pytest.raises(NonFiniteError, match="patched run"):
        activation_patch(model, batch, nan_when_patched, sites="z", per="head", batch_size=4)
    with pytest.raises(ConfigError):
        activation_patch(model, batch, "logit diff")
    with pytest.raises(ConfigError, match="logits, batch"):  # a transformer_lens-style metric of the logits only
        activation_patch(model, batch, lambda logits: logits[:, -1, 0])


def test_bad_sites_and_options(models, ioi):
    task, batch = ioi
    model = models[0]
    with pytest.raises(SiteError, match="head axis"):
        activation_patch(model, batch, task, sites="resid_pre", per="head")
    with pytest.raises(ConfigError, match="per must be"):
        activation_patch(model, batch, task, per="neuron_by_moon")
    with pytest.raises(SiteError, match="Closest valid names"):
        attribution_patch(model, batch, task, sites="resid_psot")
    with pytest.raises(SiteError, match="outside the blocks"):
        activation_patch(model, batch, task, sites="embed")
    attn_only, _ = _pair({"attn_only": True, "n_layers": 2}, bridge=False)
    with pytest.raises(SiteError):  # a model without the needed hook points
        activation_patch(attn_only, batch, task, sites="mlp_out")
    with pytest.raises(SiteError, match="no hook points"):
        activation_patch(torch.nn.Linear(2, 2), batch, task)
    with pytest.raises(ConfigError, match="direction"):
        activation_patch(model, batch, task, direction="sideways")
    with pytest.raises(ConfigError, match="steps"):
        integrated_gradients(model, batch, task, steps=0)
    with pytest.raises(ConfigError, match="method"):
        integrated_gradients(model, batch, task, method="simpson")
    with pytest.raises(ConfigError, match="unknown LRP rule"):
        relevance_patch(model, batch, task, rules=["epsilon-rule"])
    with pytest.raises(ConfigError, match="AH-rule"):
        relevance_patch(model, batch, task, sites="q", per="head", rules=["attention"])
    with pytest.raises(DataError, match="not in the universe"):
        faithfulness(model, batch, task, ["L0H1"], universe=["L1H1", "L1H2"])
    with pytest.raises(DataError, match="same granularity"):
        faithfulness(model, batch, task, ["L0H1", "resid_pre.1 pos 3"])
    with pytest.raises(ConfigError, match="ablation"):
        faithfulness(model, batch, task, ["L0H1"], ablation="zero-ish")
    assert issubclass(SiteError, MechworkError) and issubclass(NonFiniteError, MechworkError)


@pytest.mark.parametrize(
    "arch,backend_name", [("gpt2", "hooked"), ("gpt2", "bridge"), ("pythia", "hooked"), ("llama", "hooked")]
)
def test_hugging_face_architectures(tmp_path, ioi, arch, backend_name):
    """Any causal model load_model returns: GPT-2 (both backends), Pythia (rotary, parallel blocks), LLaMA (GQA,
    RMSNorm, gated MLP) from local Hugging Face folders: peer equality, resume = full forwards, LRP invariance."""
    import transformer_lens.patching as tlp
    from test_models import _hf_configs, _save_hf  # the foundation's HF-folder helper (same tests/ folder)

    task, batch = ioi
    config = _hf_configs()[arch]
    config.initializer_range = 0.4  # large enough weights for effects well above float noise
    _, folder = _save_hf(tmp_path, config, arch)
    model = mechwork.load_model(folder, backend=backend_name)
    for fn, sites, per in (
        ("get_act_patch_resid_pre", "resid_pre", "position"),
        ("get_act_patch_attn_head_out_by_pos", "z", "head_position"),
    ):
        ours = activation_patch(model, batch, task, sites=sites, per=per)
        assert float(ours.scores.abs().max()) > 1e-2
        assert_equals_transformer_lens(ours, _tl(getattr(tlp, fn), model, task, batch))
        full = activation_patch(model, batch, task, sites=sites, per=per, resume=False)
        torch.testing.assert_close(ours.scores, full.scores, atol=1e-5, rtol=1e-5)
    logits, _ = _run_all(model, batch.clean)
    with lrp(model, ["layernorm", "identity", "half", "attention"]):
        assert torch.equal(logits, _run_all(model, batch.clean)[0])
    relp = relevance_patch(
        model, batch, task, sites="z", per="head", rules=["layernorm", "identity", "half", "attention"]
    )
    assert torch.isfinite(relp.scores).all()
