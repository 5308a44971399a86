"""Projections in vocabulary space: exact against dense products on a tiny model, and ground truth on the toys."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mechwork
from mechwork.core.errors import ConfigError, MechworkError, ShapeError
from mechwork.data import vocab as V
from mechwork.data.tokenizer import encode_words
from mechwork.projection import (
    copying_score,
    induction_qk,
    induction_score,
    positional_pattern,
    prev_token_score,
    project,
)
from mechwork.projection import weights as W


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model with MLPs, unprocessed (LayerNorm weights not folded) so the final-LN fold is tested."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=37, act_fn="gelu", seed=3
    )
    m = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("b_Q", "b_K", ".w", ".b")):
                p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def _readout(m):
    w = m.ln_final.w
    U = w[:, None] * m.W_U
    return (U - U.mean(0, keepdim=True)).detach()


def test_factored_equals_dense(tiny):
    m, U = tiny, _readout(tiny)
    E = m.W_E.detach()
    dense = {
        "ov": E @ m.W_V[1, 0] @ m.W_O[1, 0] @ U,
        "qk": (E @ m.W_Q[0, 1] + m.b_Q[0, 1]) @ (E @ m.W_K[0, 1] + m.b_K[0, 1]).T,
        "neuron_out": (m.W_out[1][5] @ U)[None],
        "neuron_in": (E @ m.W_in[0][:, 7])[None],
        "embed": E @ U,
        "unembed": U.T @ U,
    }
    for kind, want in dense.items():
        p = project(m, kind, layer=1 if kind in ("ov", "neuron_out") else 0, head=0 if kind == "ov" else 1,
                    neuron=5 if kind == "neuron_out" else 7)  # fmt: skip
        torch.testing.assert_close(p.matrix, want.detach(), rtol=1e-4, atol=1e-4)
        v, i = p.top_rows(3)
        dv, di = want.detach().topk(3, dim=-1)
        torch.testing.assert_close(v, dv, rtol=1e-4, atol=1e-4)
        pairs = p.top_pairs(4)
        assert [round(x[2], 3) for x in pairs] == [round(x, 3) for x in want.flatten().topk(4).values.tolist()]
    ov = project(m, "ov", layer=1, head=0)
    want = dense["ov"].detach()
    assert ov.diagonal_score() == pytest.approx(float((want.argmax(-1) == torch.arange(37)).float().mean()))
    vals, rows, cols = ov.table([3, 5], [7, 1, 2])
    torch.testing.assert_close(vals, want[[3, 5]][:, [7, 1, 2]], rtol=1e-4, atol=1e-5)
    lam = torch.linalg.eigvals(want.double())
    assert copying_score(m, 1, 0) == pytest.approx(float(lam.real.sum() / lam.abs().sum()), abs=1e-5)


def test_directions_at_sites_equal_dense(tiny):
    m, U = tiny, _readout(tiny)
    E = m.W_E.detach()
    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 16, generator=g)
    torch.testing.assert_close(project(m, d, site="resid_post.0").matrix, d @ U, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(project(m, d, site="resid_mid.1", mode="read").matrix, (E @ d.T).T, rtol=1e-4, atol=1e-4)
    a = torch.randn(2, 32, generator=g)
    want = a @ m.W_out[1].detach() @ U
    torch.testing.assert_close(project(m, a, site="mlp_post.1").matrix, want, rtol=1e-4, atol=1e-4)
    want = (E @ m.W_in[1].detach() @ a.T).T
    torch.testing.assert_close(project(m, a, site="mlp_post.1", mode="read").matrix, want, rtol=1e-4, atol=1e-4)
    z = torch.randn(16, generator=g)  # n_heads * d_head
    want = (z.reshape(2, 8)[:, None, :] @ m.W_O[0].detach()).sum(0) @ U
    torch.testing.assert_close(project(m, z, site="z.0").matrix, want, rtol=1e-4, atol=1e-4)
    q = torch.randn(16, generator=g)
    want = (E @ torch.einsum("hde,he->d", m.W_Q[1].detach(), q.reshape(2, 8)))[None]
    torch.testing.assert_close(project(m, q, site="q.1", mode="read").matrix, want, rtol=1e-4, atol=1e-4)
    p = project(m, d, labels=["a", "b", "c"])
    assert p.top(2, row="b") == project(m, d[1]).top(2)


def test_dense_refused_when_too_big(tiny, monkeypatch):
    monkeypatch.setattr(W, "DENSE_LIMIT", 100)
    with pytest.raises(ShapeError, match="top"):
        _ = project(tiny, "ov", layer=0, head=0).matrix


def test_bad_input(tiny, toy_induction):
    with pytest.raises(ConfigError, match="head in"):
        project(tiny, "ov", layer=0, head=2)
    with pytest.raises(ConfigError, match="layer in"):
        project(tiny, "qk", layer=5, head=0)
    with pytest.raises(ConfigError, match="neuron in"):
        project(tiny, "neuron_out", layer=0, neuron=32)
    with pytest.raises(ConfigError, match="no MLPs"):
        project(toy_induction, "neuron_out", layer=0, neuron=0)
    with pytest.raises(ShapeError, match="shape \\[16\\]"):
        project(tiny, torch.randn(15))
    with pytest.raises(ShapeError, match="mlp_post.0"):
        project(tiny, torch.randn(16), site="mlp_post.0")
    with pytest.raises(MechworkError, match="NaN"):
        project(tiny, torch.full((16,), float("nan")))
    with pytest.raises(ConfigError, match="unknown projection"):
        project(tiny, "vo", layer=0, head=0)
    with pytest.raises(ConfigError, match="cannot project"):
        project(tiny, torch.randn(16), site="v.0")
    with pytest.raises(MechworkError, match="resid_post"):
        project(tiny, torch.randn(16), site="resid_pots.0")
    with pytest.raises(ConfigError, match="not a single token"):
        project(toy_induction, "ov", layer=1, head=0).top(3, row="Maryx")


# ------------------------------------------------------------------------------------- toy-induction-2l
POOL = encode_words(V.INDUCTION_POOL, bos=False)  # the tokens induction documents are drawn from


def test_induction_heads_copy_and_random_heads_do_not(toy_induction):
    from transformer_lens import HookedTransformer

    # the card's strongest induction heads (behavioural induction scores 0.84 and 0.80)
    for h in (0, 2):
        assert copying_score(toy_induction, 1, h) > 0.7
        vals, _, _ = project(toy_induction, "ov", layer=1, head=h).table(POOL, POOL)
        own_rank = (vals > vals.diagonal()[:, None]).sum(-1).float().mean()
        assert own_rank < 0.15 * len(POOL)  # each source token is among the tokens its head promotes most
    rand = HookedTransformer(toy_induction.cfg)
    assert max(abs(copying_score(rand, la, h)) for la in range(2) for h in range(4)) < 0.4


def test_prev_token_head_qk_scores_previous_position(toy_induction):
    scores = {(la, h): prev_token_score(toy_induction, la, h) for la in range(2) for h in range(4)}
    n = toy_induction.cfg.n_ctx
    uniform = sum(1 / (q + 1) for q in range(1, n)) / (n - 1)
    assert max(scores, key=scores.get) == (0, 0)  # the card's previous-token head (behavioural score 0.68)
    assert scores[(0, 0)] > 3 * uniform
    assert all(scores[(1, h)] < 1.5 * uniform for h in range(4))
    p = positional_pattern(toy_induction, 0, 0)
    assert p.shape == (n, n) and torch.allclose(p.sum(-1), torch.ones(n))


def test_induction_qk_through_prev_token_head(toy_induction):
    for h in range(4):
        vals, _, _ = induction_qk(toy_induction, 1, h, via=(0, 0)).table(POOL, POOL)
        assert (vals.argmax(-1) == torch.arange(len(POOL))).float().mean() > 0.9
        # through a head that is not a previous-token head the same form shows no induction
        vals, _, _ = induction_qk(toy_induction, 1, h, via=(0, 3)).table(POOL, POOL)
        assert (vals.argmax(-1) == torch.arange(len(POOL))).float().mean() < 0.2
    assert induction_score(toy_induction, 1, 0) > 0.3  # default via = best prev-token head; whole vocabulary
    with pytest.raises(ConfigError, match="layer >= 1"):
        induction_qk(toy_induction, 0, 0)


def test_bridge_matches_hooked(toy_induction, toy_induction_bridge):
    a = project(toy_induction, "ov", layer=1, head=2).top(5, row="Mary")
    b = project(toy_induction_bridge, "ov", layer=1, head=2).top(5, row="Mary")
    assert [t for t, _ in a] == [t for t, _ in b]
    assert copying_score(toy_induction_bridge, 1, 0) == pytest.approx(copying_score(toy_induction, 1, 0), abs=1e-4)


# ------------------------------------------------------------------------------------- toy-mixed
def test_name_movers_promote_names(toy_mixed):
    """Heads picked by direct logit attribution on IOI (ground-truth answers) promote names in their OV circuit."""
    from transformer_lens import HookedTransformer

    from mechwork.core.hooks import capture

    b = mechwork.tasks.get("ioi").prompts(48, seed=5)
    names = [f"blocks.{la}.attn.hook_z" for la in range(4)] + ["ln_final.hook_scale"]
    acts = capture(toy_mixed, b.clean, names, stop=False)
    rows = torch.arange(48)
    scale = acts["ln_final.hook_scale"][rows, b.pos]
    dirs = toy_mixed.W_U[:, b.answer] - toy_mixed.W_U[:, b.wrong]
    dla = {}
    for la in range(4):
        out = torch.einsum("bhe,hed->bhd", acts[names[la]][rows, b.pos], toy_mixed.W_O[la]) / scale[:, :, None]
        for h, v in enumerate(torch.einsum("bhd,db->bh", out, dirs).mean(0).tolist()):
            dla[(la, h)] = v
    movers = sorted(dla, key=dla.get, reverse=True)[:2]
    name_ids = torch.tensor(encode_words(V.NAMES, bos=False))

    def name_share(model, la, h):
        vals = project(model, "ov", layer=la, head=h, input="effective").table(name_ids, list(range(213)))[0]
        return float(torch.isin(vals.argmax(-1), name_ids).float().mean())

    for la, h in movers:
        assert name_share(toy_mixed, la, h) > 0.7, (la, h)
    rand = HookedTransformer(toy_mixed.cfg)
    assert name_share(rand, *movers[0]) < 0.3


@pytest.mark.parametrize("style", [0, 1])
def test_style_neuron_projects_onto_its_lexicon(toy_mixed, style):
    from mechwork.core.hooks import capture

    st = mechwork.tasks.get("style").prompts(160, seed=7)
    a = capture(toy_mixed, st.clean, ["mlp_post.2"])["blocks.2.mlp.hook_post"][torch.arange(160), st.pos]
    own = st.labels == style
    sep = (a[own].mean(0) - a[~own].mean(0)) / (a.std(0) + 1e-6)
    neuron = int(sep.argmax())  # chosen from activations and labels only
    top = [t for t, _ in project(toy_mixed, "neuron_out", layer=2, neuron=neuron).top(10)]
    n_own = sum(t in V.STYLE_WORDS[style] for t in top)
    n_other = sum(t in V.STYLE_WORDS[1 - style] for t in top)
    assert n_own >= 3 and n_other == 0, top
    # an SAE-like latent: the same neuron's write direction given as a plain tensor at mlp_post
    onehot = torch.zeros(int(toy_mixed.cfg.d_mlp))
    onehot[neuron] = 1.0
    assert [t for t, _ in project(toy_mixed, onehot, site="mlp_post.2").top(10)] == top


def test_effective_embedding_is_layer0_identity_up_to_scale(toy_induction):
    from mechwork.projection._model import effective_embedding

    e = effective_embedding(toy_induction, 0)
    x = toy_induction.W_E + toy_induction.W_pos[1]
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(e, x * math.sqrt(64) / x.norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-4)


def test_untied_model_without_embedding_refused(tiny):
    """A model that exposes no W_E and does not tie its embeddings: input-side projections refuse, outputs work."""

    class NoEmbed:
        def __init__(self, inner):
            self._inner = inner
            self.cfg = copy.copy(inner.cfg)
            self.cfg.tie_word_embeddings = False
            self.W_E = None

        def __getattr__(self, name):
            return getattr(self._inner, name)

    m = NoEmbed(tiny)
    for kind in ("qk", "ov"):
        with pytest.raises(ConfigError, match="no token embedding W_E"):
            project(m, kind, layer=0, head=0)
    with pytest.raises(ConfigError, match="no token embedding W_E"):
        project(m, "neuron_in", layer=0, neuron=0)
    assert project(m, "neuron_out", layer=0, neuron=0).shape == (1, 37)


@pytest.mark.parametrize("style", [0, 1])
def test_style_sae_latent_projects_onto_its_lexicon(toy_mixed, style):
    """The shipped SAE's most style-selective latent (chosen from activations and labels), its decoder row given as
    a plain tensor at the SAE's site, promotes that style's words."""
    from mechwork.core.hooks import capture
    from mechwork.sae import shipped

    sae = mechwork.sae.load(shipped.path("toy-mixed", "blocks.2.hook_resid_post"))
    st = mechwork.tasks.get("style").prompts(160, seed=7)
    x = capture(toy_mixed, st.clean, ["resid_post.2"])["blocks.2.hook_resid_post"][torch.arange(160), st.pos]
    with torch.no_grad():
        f = sae.encode(x)
    own = st.labels == style
    latent = int((f[own].mean(0) - f[~own].mean(0)).argmax())
    top = [t for t, _ in project(toy_mixed, sae.W_dec[latent].detach(), site="resid_post.2").top(10)]
    assert sum(t in V.STYLE_WORDS[style] for t in top) >= 6, top
    assert not any(t in V.STYLE_WORDS[1 - style] for t in top), top
