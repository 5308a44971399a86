"""Circuits: ground truth (K-composition, IOI faithfulness), axioms (EAP = exact on a linear model, EAP-IG
completeness), backend agreement, latent graphs."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.circuits import Graph, attribute_edges, attribute_latents, faithfulness_curve
from mechwork.tasks import PromptBatch


def _prev_token_head(model, batch) -> int:
    _, cache = model.run_with_cache(batch.clean, names_filter="blocks.0.attn.hook_pattern")
    pat = cache["blocks.0.attn.hook_pattern"]  # [b, h, q, k]
    prev = pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))  # attention to q-1, per head
    return int(prev.argmax())


@pytest.fixture(scope="module")
def induction_batch():
    return mechwork.tasks.get("induction").prompts(8, seed=0)


@pytest.mark.parametrize("method", ["eap", "exact"])
def test_k_composition_is_the_top_edge_into_layer1(toy_induction, induction_batch, method):
    g = attribute_edges(toy_induction, induction_batch, method=method)
    prev = _prev_token_head(toy_induction, induction_batch)
    into_l1 = [e for e in g.edges if e.dst.startswith("a1.")]
    top = max(into_l1, key=lambda e: abs(e.weight))
    assert top.src == f"a0.h{prev}" and top.kind == "k", (top, prev)
    # the K input carries more than the Q and V inputs from the same head
    by_kind = {k: sum(abs(e.weight) for e in into_l1 if e.src == top.src and e.kind == k) for k in "qkv"}
    assert by_kind["k"] > by_kind["q"] and by_kind["k"] > by_kind["v"]


def test_backends_agree(toy_induction, toy_induction_bridge, induction_batch):
    for method in ("eap", "exact"):
        a = attribute_edges(toy_induction, induction_batch, method=method).edge_dict()
        b = attribute_edges(toy_induction_bridge, induction_batch, method=method).edge_dict()
        assert a.keys() == b.keys()
        scale = max(abs(v) for v in a.values())
        assert max(abs(a[k] - b[k]) for k in a) < 1e-4 * scale


def _linear_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=20, attn_only=True,
        normalization_type=None, act_fn="relu", seed=3,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    torch.manual_seed(0)
    clean = torch.randint(0, 20, (6, 10))
    corrupted = clean.clone()
    corrupted[:, 3:6] = torch.randint(0, 20, (6, 3))
    batch = PromptBatch(
        task="custom", clean=clean, corrupted=corrupted, answer=torch.full((6,), 4), wrong=torch.full((6,), 7),
        pos=torch.full((6,), 9),
    )  # fmt: skip
    return model, batch


def test_eap_equals_exact_where_the_model_is_linear():
    """No LayerNorm, attention-only: the metric is linear in the logits' input and in the last layer's value
    inputs (patterns depend on q/k only), so there EAP must equal exact edge patching; through q/k it need not."""
    model, batch = _linear_model()
    metric = lambda logits, b: mechwork.tasks.logit_diff(logits, b)  # noqa: E731
    eap = attribute_edges(model, batch, metric, method="eap")
    exact = attribute_edges(model, batch, metric, method="exact").edge_dict()
    linear = [e for e in eap.edges if e.dst == "logits" or (e.dst.startswith("a1.") and e.kind == "v")]
    assert len(linear) > 10
    scale = max(abs(exact[e.id]) for e in linear)
    assert max(abs(e.weight - exact[e.id]) for e in linear) < 1e-4 * scale
    qk = [e for e in eap.edges if e.dst.startswith("a1.") and e.kind in "qk"]
    assert max(abs(e.weight - exact[e.id]) for e in qk) > 1e-3 * scale  # the softmax is not linear


def test_eap_ig_completeness(toy_mixed):
    batch = mechwork.tasks.get("ioi").prompts(6, seed=1)
    recv = ["logits", "m2", "a3.h1<v>", "a2.h0<k>"]
    g = attribute_edges(toy_mixed, batch, method="eap-ig", path="activations", receivers=recv, steps=12)
    comp = g.metadata["completeness"]
    assert set(comp) == set(recv)
    for name, c in comp.items():
        assert abs(c["exact"]) > 1e-3, name
        assert c["relative_error"] < 0.01, (name, c)
        into = sum(e.weight for e in g.edges if f"{e.dst}<{e.kind}>" == name or (e.dst == name and e.kind not in "qkv"))
        assert abs(into - c["sum"]) < 1e-4 * max(1.0, abs(c["sum"]))


def test_ioi_small_circuit_is_faithful(toy_mixed):
    batch = mechwork.tasks.get("ioi").prompts(16, seed=2)
    g = attribute_edges(toy_mixed, batch, method="eap-ig", steps=8)
    curve = faithfulness_curve(g, toy_mixed, batch, sizes=[0, 10, 20, 30, 45, 60, g.n_edges])
    assert curve.values[0] == pytest.approx(0.0, abs=1e-3)  # nothing kept = the corrupted run
    assert curve.values[-1] == pytest.approx(1.0, abs=1e-3)  # everything kept = the clean run
    k = curve.smallest(0.8)
    assert k is not None and k <= 0.15 * g.n_edges, curve
    circuit = g.prune(top_n=k)
    f = circuit.faithfulness(toy_mixed, batch)
    assert f.value >= 0.8 and f.n_edges == circuit.n_edges
    assert f.empty == pytest.approx(f.corrupted, abs=1e-3)
    fig = curve.plot()
    assert fig.data and fig.layout.xaxis.type == "log"


def test_influence_pruning_keeps_logits_and_connectivity(toy_mixed):
    batch = mechwork.tasks.get("ioi").prompts(8, seed=0)
    g = attribute_edges(toy_mixed, batch, method="eap")
    p = g.prune(influence=0.9, edge_influence=0.99)
    assert "logits" in p and 0 < p.n_edges < g.n_edges
    assert p.metadata["pruning"]["rule"] == "influence"
    srcs, dsts = {e.src for e in p.edges}, {e.dst for e in p.edges}
    for n in p.nodes:  # every kept component reads something and writes something
        if n.kind in ("head", "mlp"):
            assert n.id in srcs and n.id in dsts, n.id
    inf = torch.tensor([n.influence for n in g.nodes])
    assert float(inf[[i for i, n in enumerate(g.nodes) if n.kind == "input"]][0]) >= float(inf.max()) - 1e-9


def test_node_graph_from_patch_result(toy_mixed):
    from mechwork.patching import activation_patch

    batch = mechwork.tasks.get("ioi").prompts(8, seed=0)
    r = activation_patch(toy_mixed, batch, sites="z", per="head")
    g = Graph.from_scores(r, model=toy_mixed)
    assert g.level == "node" and g.n_edges == 16 and "a3.h0" in g
    top = g.prune(top_n=4)
    f = top.faithfulness(toy_mixed, batch)
    from mechwork.patching import faithfulness as node_faithfulness

    ref = node_faithfulness(
        toy_mixed, batch, None, [f"L{n.layer}H{n.index}" for n in top.nodes if n.kind == "head"], universe=r
    )
    assert f.value == pytest.approx(ref.value, abs=1e-6)


def test_latent_graph(toy_mixed):
    from mechwork.circuits.latents import parse_sae_args
    from mechwork.core.hooks import run_with_hooks

    batch = mechwork.tasks.get("ioi").prompts(1, seed=0)
    saes = parse_sae_args(
        ["sae_checkpoints/toy-mixed/blocks.1.hook_resid_post", "sae_checkpoints/toy-mixed/blocks.2.hook_resid_post"]
    )
    g = attribute_latents(toy_mixed, batch, saes=saes, max_targets=8)
    kinds = {n.kind for n in g.nodes}
    assert {"latent", "error", "token", "logits"} <= kinds
    # splicing leaves the forward unchanged: the clean metric is the model's own
    assert g.metadata["clean"] == pytest.approx(
        float(mechwork.tasks.logit_diff(toy_mixed(batch.clean).detach(), batch)), rel=1e-4
    )
    # at the last site, latents + error + b_dec carry exactly x . dm/dx (activation x gradient is additive)
    site = "blocks.2.hook_resid_post"
    probe = {}

    def hook(t, hook=None):
        probe["x"] = t.detach()
        probe["p"] = torch.zeros_like(t, requires_grad=True)
        return t + probe["p"]

    with torch.enable_grad():
        m = mechwork.tasks.logit_diff(run_with_hooks(toy_mixed, batch.clean, [(site, hook)]), batch)
        (grad,) = torch.autograd.grad(m.sum(), [probe["p"]])
    sae = saes[site]
    b_dec = sae.decode(torch.zeros(1, sae.d_sae))[0]
    for p in (int(batch.pos[0]), 5):
        into = sum(
            e.weight
            for e in g.edges
            if e.dst == "logits" and e.src.startswith("resid_post.2:") and e.src.endswith(f"@{p}")
        )
        expect = float((probe["x"][0, p] - b_dec) @ grad[0, p])
        assert into == pytest.approx(expect, rel=1e-3, abs=1e-4)


def test_latent_graph_faithfulness_and_scan_labels(toy_mixed):
    from mechwork.circuits.latents import parse_sae_args

    task = mechwork.tasks.get("ioi")
    batch = task.prompts(1, seed=0)
    saes = parse_sae_args(
        ["sae_checkpoints/toy-mixed/blocks.1.hook_resid_post", "sae_checkpoints/toy-mixed/blocks.2.hook_resid_post"]
    )
    scan = mechwork.sae.latent_stats(saes["blocks.2.hook_resid_post"], model=toy_mixed, n_tokens=2000)
    g = attribute_latents(toy_mixed, batch, task, saes=saes, max_targets=8, scans={"blocks.2.hook_resid_post": scan})
    tags = {r["latent"]: r["tag"] for r in scan.tag_table()}
    labelled = [n for n in g.nodes if n.kind == "latent" and n.site == "blocks.2.hook_resid_post"]
    assert labelled and all(n.label.startswith(tags[n.index]) for n in labelled if n.index in tags)
    full = g.faithfulness(toy_mixed, batch, task, saes=saes)
    assert full.value == pytest.approx(1.0, abs=1e-4)  # every clean-active latent and error kept = the clean run
    small = g.prune(influence=0.5).faithfulness(toy_mixed, batch, task, saes=saes)
    big = g.prune(influence=0.95).faithfulness(toy_mixed, batch, task, saes=saes)
    assert full.empty < big.metric and small.metric <= big.metric + 1e-3
    with pytest.raises(mechwork.ConfigError, match="SAEs"):
        g.faithfulness(toy_mixed, batch, task)


@pytest.mark.parametrize("backend_name", ["hooked", "bridge"])
def test_per_position_edges(request, induction_batch, backend_name, tmp_path):
    import jsonschema

    model = request.getfixturevalue("toy_induction" if backend_name == "hooked" else "toy_induction_bridge")
    gp = attribute_edges(model, induction_batch, method="eap", per_position=True)
    assert all("@" in n.id for n in gp.nodes)
    # summed over positions, the per-position edges are exactly the EAP edges
    agg, ref = gp.aggregate().edge_dict(), attribute_edges(model, induction_batch, method="eap").edge_dict()
    scale = max(abs(v) for v in ref.values())
    assert max(abs(agg.get(k, 0.0) - ref[k]) for k in ref) < 1e-5 * scale
    assert set(agg) <= set(ref)
    # K-composition runs across positions: the top key edge into a layer-1 head comes from an earlier position
    top = max((e for e in gp.edges if e.dst.startswith("a1.") and e.kind == "k"), key=lambda e: abs(e.weight))
    src_pos, dst_pos = (int(x.rsplit("@", 1)[1]) for x in (top.src, top.dst))
    assert top.src.startswith(f"a0.h{_prev_token_head(model, induction_batch)}@") and src_pos < dst_pos, top
    circuit = gp.prune(influence=0.9)
    d = __import__("json").loads(circuit.save(tmp_path / "pp.json").read_text())
    jsonschema.validate(d, mechwork.circuits.NEURONPEDIA_SCHEMA)
    assert Graph.load(tmp_path / "pp.json").equals(circuit)
    assert 0 < circuit.faithfulness(model, induction_batch).value <= 1.05  # on its component edges


def test_latent_graph_backends_agree(toy_mixed, toy_mixed_bridge):
    from mechwork.circuits.latents import parse_sae_args

    task = mechwork.tasks.get("ioi")
    saes = parse_sae_args(["sae_checkpoints/toy-mixed/blocks.1.hook_resid_post"])
    graphs = [
        attribute_latents(m, task.prompts(1, seed=3, model=m), task, saes=saes, max_targets=4)
        for m in (toy_mixed, toy_mixed_bridge)
    ]
    a, b = (g.edge_dict() for g in graphs)
    assert a.keys() == b.keys() and len(a) > 10
    scale = max(abs(v) for v in a.values())
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4 * scale
