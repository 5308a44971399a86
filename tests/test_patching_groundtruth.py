"""Patching on the shipped models: peer equality with transformer_lens.patching, IG completeness, and ground
truth (induction heads on toy-induction-2l, faithful IOI heads on toy-mixed).

Head indices are never hard-coded: induction heads are identified by their induction score, so the tests hold
for retrained weights."""

from __future__ import annotations

import pytest
import torch
from test_patching import assert_equals_transformer_lens  # same tests/ folder

import mechwork
from mechwork.patching import (
    activation_patch,
    attribution_patch,
    faithfulness,
    integrated_gradients,
    relevance_patch,
)

torch.set_num_threads(1)
GRADIENT_METHODS = {"AtP": attribution_patch, "RelP": relevance_patch, "IG": integrated_gradients}


@pytest.fixture(scope="module")
def ioi():
    task = mechwork.tasks.get("ioi")
    return task, task.prompts(16, seed=0)


@pytest.fixture(scope="module")
def induction():
    task = mechwork.tasks.get("induction", prefix_len=4, segment_len=8)
    return task, task.prompts(16, seed=0)


def _tl(fn_name, model, task, batch):
    import transformer_lens.patching as tlp

    _, cache = model.run_with_cache(batch.clean)

    def metric(logits):
        return task.metric(logits, batch).mean()

    with torch.no_grad():
        m_corr = metric(model(batch.corrupted)).item()
    return getattr(tlp, fn_name)(model, batch.corrupted, cache, metric).cpu() - m_corr


@pytest.mark.parametrize("name", ["toy-mixed", "toy-induction-2l"])
def test_peer_equality_on_shipped_models(name, backend, request, ioi, induction):
    fixture = {"toy-mixed": "toy_mixed", "toy-induction-2l": "toy_induction"}[name] + (
        "_bridge" if backend == "bridge" else ""
    )
    model = request.getfixturevalue(fixture)
    task, batch = ioi if name == "toy-mixed" else induction
    batch = batch.select(range(8))
    for fn, sites, per in (
        ("get_act_patch_resid_pre", "resid_pre", "position"),
        ("get_act_patch_attn_head_out_by_pos", "z", "head_position"),
    ):
        ours = activation_patch(model, batch, task, sites=sites, per=per)
        assert_equals_transformer_lens(ours, _tl(fn, model, task, batch))


@pytest.mark.parametrize("name", ["toy-mixed", "toy-induction-2l"])
def test_ig_completeness_on_shipped_models(name, request, ioi, induction):
    model = request.getfixturevalue({"toy-mixed": "toy_mixed", "toy-induction-2l": "toy_induction"}[name])
    task, batch = ioi if name == "toy-mixed" else induction
    ig = integrated_gradients(model, batch.select(range(8)), task, sites="resid_pre", per="position", steps=64)
    gap = ig.clean - ig.corrupted
    assert abs(gap) > 0.5  # the task has a real clean/corrupted difference to explain
    for layer in range(model.cfg.n_layers):
        assert float(ig.scores[layer].sum()) == pytest.approx(gap, rel=0.01)


def _circuit(model):
    """Induction heads (layer 1) and previous-token heads (layer 0) by their attention scores (model card metric)."""
    from mechwork.models.quality import head_scores

    scores = head_scores(model)
    ind, prev = torch.tensor(scores["induction"]), torch.tensor(scores["previous_token"])
    induction = {(1, h) for h in range(ind.shape[1]) if ind[1, h] > 0.4}
    previous = {(0, h) for h in range(prev.shape[1]) if prev[0, h] > 0.4}
    if not induction or not previous:
        pytest.fail(
            f"toy-induction-2l lacks the canonical circuit: induction scores {ind.tolist()}, "
            f"previous-token scores {prev.tolist()} (report to the lead)"
        )
    return induction, previous


IG_JOINT = pytest.mark.xfail(
    strict=True,
    reason=(
        "IG (site path) scores a head by its share of the joint patch of its whole layer: the previous-token head, "
        "useless when patched alone, carries much of the joint effect of layer 0 and ranks first"
    ),
)


@pytest.mark.parametrize("method", ["activation", "AtP", "RelP", pytest.param("IG", marks=IG_JOINT)])
def test_induction_heads_are_the_top_heads(toy_induction, induction, method):
    """Issue 5 ground truth: the top heads by activation patching are the layer-1 induction heads (identified by
    their induction score), and each gradient method ranks them at the top too."""
    task, batch = induction
    heads, _ = _circuit(toy_induction)
    fn = activation_patch if method == "activation" else GRADIENT_METHODS[method]
    r = fn(toy_induction, batch, task, sites="z", per="head")
    top = {(n.layer, n.head) for n in r.top(len(heads), absolute=False)}
    assert top == heads, f"{method}: top heads {sorted(top)} but induction heads {sorted(heads)}"
    if method != "activation":
        assert r.correlation(activation_patch(toy_induction, batch, task, sites="z", per="head")) > 0.8


def test_integrated_gradients_ranks_the_induction_circuit(toy_induction, induction):
    """What IG does find: its top heads are circuit heads, the previous-token head among them, and per layer its
    scores add up to patching the whole layer (completeness)."""
    task, batch = induction
    heads, previous = _circuit(toy_induction)
    ig = integrated_gradients(toy_induction, batch, task, sites="z", per="head", steps=32)
    top = {(n.layer, n.head) for n in ig.top(3, absolute=False)}
    assert top <= heads | previous and top & previous, f"IG top heads {sorted(top)}"
    whole = activation_patch(toy_induction, batch, task, sites="z", per="layer")
    torch.testing.assert_close(ig.scores.sum(1), whole.scores, rtol=0.01, atol=1e-3)


def test_ioi_top_heads_are_faithful(toy_mixed, ioi):
    """IOI ground truth on toy-mixed: keeping the top heads of each method clean (every other head corrupted, MLPs
    clean) recovers most of the logit difference. "Top" = as many heads as individually recover >= 10% of the gap."""
    task, batch = ioi
    ap = activation_patch(toy_mixed, batch, task, sites="z", per="head")
    assert ap.gap > 1.0
    k = int((ap.normalized() >= 0.1).sum())
    assert 1 <= k <= 10, f"{k} heads each recover >= 10% of the logit difference"
    results = {
        "activation": ap,
        **{n: fn(toy_mixed, batch, task, sites="z", per="head") for n, fn in GRADIENT_METHODS.items()},
    }
    values = {}
    for name, r in results.items():
        f = faithfulness(toy_mixed, batch, task, r.top(k, absolute=False), universe=ap)
        values[name] = f.value
        assert f.value > 0.6, (
            f"{name}: top-{k} heads {[str(n) for n in r.top(k, absolute=False)]} faithfulness {f.value:.3f}"
        )
    assert max(values.values()) - min(values.values()) < 0.1, values
