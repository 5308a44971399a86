"""The LRP rules' own invariant: in a bias-free model, relevance ``R(site) = Σ act · LRP-gradient`` is conserved
through each rule, up to the documented terms (the Identity-rule's stabiliser ``EPS``).

Why it holds: with the rules on, every layer is linear in its input with detached coefficients (LayerNorm's scale
constant, the activation replaced by the coefficient act(x)/x, attention patterns constant, a gated product split
1/2 - 1/2), so by Euler's identity ``Σ x · ∂f/∂x = f`` at every cut through the network. Each test also shows the
invariant *failing* without the rule (the check can fail), in float64 so that the tolerances are tight.
"""

from __future__ import annotations

import pytest
import torch

from mechwork.patching.lrp import EPS, lrp_hooks

TOL = 1e-9


def _model(**overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        d_vocab=40,
        n_ctx=16,
        act_fn="gelu",
        normalization_type="LN",
        dtype=torch.float64,
        seed=0,
    )
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b"):  # b_Q, b_K, b_V, b_O, b_in, b_out, b_U, LayerNorm b
                p.zero_()
            elif name.endswith(".w"):  # LayerNorm gains away from 1, so they are really exercised
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1))


def _relevance(model, tokens, names, rules):
    """``f`` (a sum of single logits) and ``R(name) = Σ act · ∂f/∂act`` with the LRP ``rules`` on."""
    probes, acts = {}, {}

    def probe(t, hook):
        acts[hook.name] = t.detach()
        probes[hook.name] = torch.zeros_like(t, requires_grad=True)
        return t + probes[hook.name]

    before, after = lrp_hooks(model, rules) if rules else ([], [])
    with model.hooks(fwd_hooks=before + [(n, probe) for n in names] + after):
        logits = model(tokens)
    f = logits[:, -1, 5].sum() + logits[:, 3, 7].sum()
    grads = torch.autograd.grad(f, [probes[n] for n in names])
    return (
        float(f.detach()),
        {n: float((acts[n] * g).sum()) for n, g in zip(names, grads)},
        acts,
        dict(zip(names, grads)),
    )


ALL = ["layernorm", "identity", "attention"]


def test_relevance_is_conserved_through_the_whole_model(tokens):
    """With every rule on, each residual cut carries exactly the output's relevance (bias-free: no sink)."""
    model = _model()
    cuts = [f"blocks.{i}.hook_resid_{w}" for i in range(2) for w in ("pre", "mid")] + ["blocks.1.hook_resid_post"]
    f, R, acts, grads = _relevance(model, tokens, cuts + ["blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_pre"], ALL)
    # the only departure allowed: the Identity-rule's stabiliser, act(x) * EPS / (x + sign(x) EPS) per unit
    slack = sum(_identity_slack(model, tokens, i) for i in range(2))
    for n in cuts:
        assert R[n] == pytest.approx(f, abs=TOL * abs(f) + slack), (n, R[n], f)
    assert abs(f) > 1e-2
    # without the rules the cuts do not conserve (plain gradient x input)
    _, R0, _, _ = _relevance(model, tokens, cuts, [])
    assert max(abs(R0[n] - f) for n in cuts) > 0.1 * abs(f)


def _identity_slack(model, tokens, layer):
    """Upper bound of the Identity-rule's documented term at one MLP: Σ |post · g| · EPS / |x_s|."""
    p = f"blocks.{layer}.mlp."
    _, _, acts, grads = _relevance(model, tokens, [p + "hook_pre", p + "hook_post"], ALL)
    x = acts[p + "hook_pre"]
    x_s = x + ((x == 0).double() + x.sign()) * EPS
    return float((acts[p + "hook_post"] * grads[p + "hook_post"]).abs().mul(EPS / x_s.abs()).sum()) + 1e-12


def test_layernorm_rule_conserves_and_plain_layernorm_does_not(tokens):
    """The last residual feeds only ln_final: with the LN-rule R(resid) = R(normalised); without it the scale
    invariance of LayerNorm makes Σ x · ∂f/∂x vanish."""
    model = _model()
    names = ["blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    f, R, _, _ = _relevance(model, tokens, names, ["layernorm"])
    assert R[names[0]] == pytest.approx(R[names[1]], abs=TOL * abs(f)) and R[names[1]] == pytest.approx(f, rel=1e-9)
    _, R0, _, _ = _relevance(model, tokens, names, [])
    assert abs(R0[names[0]]) < 1e-3 * abs(f)  # zero up to LayerNorm's eps
    assert R0[names[1]] == pytest.approx(f, rel=1e-9)


def test_identity_rule_conserves_through_the_activation(tokens):
    model = _model()
    p = "blocks.0.mlp."
    names = [p + "hook_pre", p + "hook_post"]
    f, R, _, _ = _relevance(model, tokens, names, ["identity"])
    slack = _identity_slack(model, tokens, 0)
    assert slack < 1e-4 * abs(R[names[1]])  # the documented term is small here
    assert R[names[0]] == pytest.approx(R[names[1]], abs=slack + TOL * abs(f))
    _, R0, _, _ = _relevance(model, tokens, names, [])  # GELU: x gelu'(x) != gelu(x)
    assert abs(R0[names[0]] - R0[names[1]]) > 1e-3 * abs(R0[names[1]])


def test_attention_rule_conserves_through_attention(tokens):
    """Block 1's attention input (the residual stream read by ln1, whose hook fires once each for q, k and v)
    passes all its relevance to the values with patterns constant: R_attn_in = R(z) = R(attn_out). Without the
    AH-rule q and k take relevance through the softmax as well and the sum is not conserved.
    R_attn_in = R(resid_pre) - Σ resid_pre · ∂f/∂resid_mid (the skip connection's share)."""
    model = _model()
    p = "blocks.1."
    names = [p + "hook_resid_pre", p + "hook_resid_mid", p + "attn.hook_z", p + "hook_attn_out"]

    def attn_in(rules):
        f, R, acts, g = _relevance(model, tokens, names, rules)
        skip = float((acts[p + "hook_resid_pre"] * g[p + "hook_resid_mid"]).sum())
        return f, R[p + "hook_resid_pre"] - skip, R

    f, r_in, R = attn_in(["layernorm", "attention"])
    assert R[p + "attn.hook_z"] == pytest.approx(R[p + "hook_attn_out"], abs=TOL * abs(f))
    assert r_in == pytest.approx(R[p + "attn.hook_z"], abs=TOL * abs(f))
    assert abs(R[p + "attn.hook_z"]) > 1e-2
    f, r_in, R = attn_in(["layernorm"])
    assert abs(r_in - R[p + "attn.hook_z"]) > 1e-2 * abs(R[p + "attn.hook_z"])


def test_half_rule_conserves_through_a_gated_mlp(tokens):
    """post = act(pre) * lin: with the Half- and Identity-rules R(pre) + R(lin) = R(post); the Identity-rule
    alone gives each factor the whole product's relevance (counted twice)."""
    model = _model(normalization_type="RMS", gated_mlp=True, act_fn="silu")
    p = "blocks.1.mlp."
    names = [p + "hook_pre", p + "hook_pre_linear", p + "hook_post"]
    f, R, acts, grads = _relevance(model, tokens, names, ["identity", "half"])
    x = acts[p + "hook_pre"]
    post_g = acts[p + "hook_post"] * grads[p + "hook_post"]
    slack = float((0.5 * post_g).abs().mul(EPS / (x + ((x == 0).double() + x.sign()) * EPS).abs()).sum())
    assert R[p + "hook_pre"] + R[p + "hook_pre_linear"] == pytest.approx(R[p + "hook_post"], abs=slack + TOL * abs(f))
    assert R[p + "hook_pre_linear"] == pytest.approx(0.5 * R[p + "hook_post"], rel=1e-9)
    _, R1, _, _ = _relevance(model, tokens, names, ["identity"])
    assert R1[p + "hook_pre"] + R1[p + "hook_pre_linear"] == pytest.approx(2 * R1[p + "hook_post"], rel=1e-6)
    # and the whole gated model conserves with every rule on
    cuts = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    f, R, _, _ = _relevance(model, tokens, cuts, ["layernorm", "identity", "half", "attention"])
    for n in cuts:
        assert R[n] == pytest.approx(f, rel=1e-6), (n, R[n], f)


@pytest.mark.parametrize("grid", ["resid_pre", "mlp_out"])
def test_relp_is_exactly_activation_patching_of_the_frozen_model(toy_mixed, grid):
    """RelP with the LN-, Identity- and AH-rules is the exact effect of patching the model whose LayerNorm
    scales, attention patterns and activation coefficients are held at the corrupted run (linear in each cell),
    computed here by forward passes with :func:`frozen_hooks`; plain AtP is not."""
    import mechwork
    from mechwork.patching import attribution_patch, relevance_patch
    from mechwork.patching.lrp import frozen_hooks, frozen_names

    model, task = toy_mixed, mechwork.tasks.get("ioi")
    batch = task.prompts(8, seed=5)
    names = set(frozen_names(model))
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.corrupted, names_filter=lambda n: n in names)
        hooks = frozen_hooks(model, dict(cache.items()))
        hook = {"resid_pre": "hook_resid_pre", "mlp_out": "hook_mlp_out"}[grid]
        sites = [f"blocks.{i}.{hook}" for i in range(model.cfg.n_layers)]
        _, clean = model.run_with_cache(batch.clean, names_filter=lambda n: n in sites)
        with model.hooks(fwd_hooks=hooks):
            base = task.metric(model(batch.corrupted), batch)
        frozen = torch.zeros(model.cfg.n_layers, batch.clean.shape[1])
        for layer, name in enumerate(sites):
            for pos in range(batch.clean.shape[1]):

                def patch(t, hook, v=clean[name], pos=pos):
                    t = t.clone()
                    t[:, pos] = v[:, pos]
                    return t

                with model.hooks(fwd_hooks=[*hooks, (name, patch)]):
                    frozen[layer, pos] = (task.metric(model(batch.corrupted), batch) - base).mean()
    rules = ["layernorm", "identity", "attention"]
    relp = relevance_patch(model, batch, task, sites=grid, per="position", rules=rules).scores
    scale = float(frozen.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(relp, frozen, atol=1e-5 * scale, rtol=0)
    atp = attribution_patch(model, batch, task, sites=grid, per="position").scores
    assert float((atp - frozen).abs().max()) > 1e-3 * scale
