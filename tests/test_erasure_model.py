"""Erasers inside models: hooks on both backends, fitting from a model, scrubbing in causal order, fitting from an
activation store, the CLI, and the behaviour test on toy-mixed (gender to chance, IOI kept)."""

from __future__ import annotations

import json

import pytest
import torch

import mechwork
from mechwork.cli import main
from mechwork.erasure import LEACE, behaviour, causal_order, evaluate, fit, fit_store, labelled, scrub
from mechwork.erasure import labelled_activations as collect

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gender_sweep(toy_mixed):
    """LEACE fitted at every residual-stream site of toy-mixed, and the model's behaviour with each hooked in."""
    rows = {}
    clean = behaviour(toy_mixed, None, tasks=("ioi",), n=200, seed=1)
    for s in mechwork.erasure.residual_sites(toy_mixed):
        e = fit(toy_mixed, "gender", s, "leace", n=1500, seed=0)
        rows[s] = (e, behaviour(toy_mixed, e.hook(toy_mixed, s), tasks=("ioi",), n=200, seed=1))
    return clean, rows


def test_behaviour_gender_to_chance_ioi_kept(gender_sweep):
    """At the best site (found by measurement), gender accuracy drops to about chance while IOI stays within a
    few points of the clean model."""
    clean, rows = gender_sweep
    assert clean["gender"]["accuracy"] > 0.9, clean
    site, (eraser, after) = min(rows.items(), key=lambda kv: kv[1][1]["gender"]["accuracy"])
    report = {s: (round(b["gender"]["accuracy"], 3), round(b["ioi"]["accuracy"], 3)) for s, (_, b) in rows.items()}
    assert abs(after["gender"]["accuracy"] - 0.5) < 0.1, report
    assert clean["ioi"]["accuracy"] - after["ioi"]["accuracy"] < 0.05, (clean["ioi"], report)
    assert eraser.rank == 1


def test_stratified_leace_erases_at_a_middle_layer(toy_mixed, gender_sweep):
    """Fitted on every position at once, a rank-1 eraser at a middle layer leaves gender at the prediction position;
    stratified by position (Cov(r(X), z | pos) = 0) it removes it there too, and IOI is kept. The layer is chosen by
    measurement among the middle layers where the plain eraser misses gender (which layer depends on the weights)."""
    clean, rows = gender_sweep
    missed = [s for s in ("resid_pre.1", "resid_pre.2", "resid_pre.3") if rows[s][1]["gender"]["accuracy"] > 0.8]
    assert missed, {s: rows[s][1]["gender"]["accuracy"] for s in rows}  # the unstratified eraser misses it there
    results = {}
    for s in missed:
        e = fit(toy_mixed, "gender", s, "leace", n=800, seed=0, stratify="position")
        results[s] = (e, behaviour(toy_mixed, e.hook(toy_mixed, s), tasks=("ioi",), n=200, seed=1))
    report = {s: (round(b["gender"]["accuracy"], 3), round(b["ioi"]["accuracy"], 3)) for s, (_, b) in results.items()}
    erased = {s: r for s, r in results.items() if abs(r[1]["gender"]["accuracy"] - 0.5) < 0.1}
    assert erased, report
    site, (e, after) = max(erased.items(), key=lambda kv: kv[1][1]["ioi"]["accuracy"])
    assert clean["ioi"]["accuracy"] - after["ioi"]["accuracy"] < 0.05, report
    assert 1 < e.rank <= labelled("gender", n=8).tokens.shape[1] and e.config.positions == "all/stratified-by-position"
    # in-sample: within every position, the class means of the erased activations are equal
    lab = labelled("gender", n=800, seed=0)
    X, z = collect(toy_mixed, lab, site)
    Xe, pos = e(X).double(), lab.mask.nonzero()[:, 1]
    for j in pos.unique():
        sel = pos == j
        if z[sel].unique().numel() == 2:
            gap = Xe[sel & (z == 1)].mean(0) - Xe[sel & (z == 0)].mean(0)
            assert gap.abs().max() < 1e-3, (int(j), float(gap.abs().max()))
    with pytest.raises(mechwork.ConfigError, match="LEACE option"):
        fit(toy_mixed, "gender", site, "inlp", n=50, stratify="position")


def test_hook_same_on_both_backends(gender_sweep, toy_mixed, toy_mixed_bridge):
    _, rows = gender_sweep
    site, (eraser, _) = next(iter(rows.items()))
    batch = mechwork.tasks.get("gender").prompts(16, seed=3)
    with torch.inference_mode():
        clean = toy_mixed(batch.clean)
        with eraser.hook(toy_mixed, site):
            a = toy_mixed(batch.clean)
        with eraser.hook(toy_mixed_bridge, site):
            b = toy_mixed_bridge(batch.clean)
        after = toy_mixed(batch.clean)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
    assert (a - clean).abs().max() > 1e-2
    torch.testing.assert_close(after, clean)  # the hook is gone after the block
    with torch.inference_mode():  # restricted to one position: earlier positions are untouched
        with eraser.hook(toy_mixed, site, positions=[3]):
            c = toy_mixed(batch.clean)
        mask = torch.zeros(batch.clean.shape, dtype=torch.bool)
        mask[:, 3] = True
        with eraser.hook(toy_mixed_bridge, site, positions=mask):
            d = toy_mixed_bridge(batch.clean)
    torch.testing.assert_close(c[:, :3], clean[:, :3])
    assert (c[:, 3:] - clean[:, 3:]).abs().max() > 1e-3
    torch.testing.assert_close(c, d, atol=1e-3, rtol=1e-4)
    with pytest.raises(mechwork.ShapeError, match="width"):
        eraser.hook(toy_mixed, "mlp_post.0")
    with pytest.raises(mechwork.SiteError, match="resid_pre"):
        eraser.hook(toy_mixed, "resid_pree.1")


def test_fit_from_model_on_both_backends(toy_mixed_any):
    e = fit(toy_mixed_any, "gender", "resid_post.0", "leace", n=200, seed=0, positions="last")
    assert e.config.n_samples == 200 and e.config.site == "blocks.0.hook_resid_post" and e.config.task == "gender"
    ref = fit(toy_mixed_any, "gender", "resid_post.0", LEACE(), n=200, seed=0, positions="content")
    lab = labelled("gender", n=200, seed=0, positions="content")
    assert ref.config.n_samples == int(lab.mask.sum()) == int(lab.mask[:, 1:].sum())  # every real token but BOS


def test_scrub_causal_order_upstream_and_roundtrip(toy_mixed, tmp_path):
    sites = ["resid_pre.2", "z.0", "resid_pre.1"]
    assert [s.alias for s in causal_order(toy_mixed, sites)] == ["z.0", "resid_pre.1", "resid_pre.2"]
    sc = scrub(toy_mixed, "gender", sites, "leace", n=200, seed=0)
    assert sc.sites == ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]
    # the last eraser was fitted on activations erased at both upstream sites
    lab = labelled("gender", n=200, seed=0)
    X, z = collect(toy_mixed, lab, "resid_pre.2", upstream=list(sc)[:2])
    torch.testing.assert_close(sc["resid_pre.2"].projection, LEACE.fit(X, z).projection, atol=1e-5, rtol=0)
    sc.save(tmp_path / "sc")
    back = mechwork.erasure.load(tmp_path / "sc")
    toks = lab.tokens[:8]
    with torch.inference_mode():
        with sc.hook(toy_mixed):
            a = toy_mixed(toks)
        with back.hook(toy_mixed):
            b = toy_mixed(toks)
    torch.testing.assert_close(a, b)
    rep = evaluate(sc, toy_mixed, "gender", n=150, behaviour_n=64, tasks=("ioi",), probes=("linear",))
    assert rep["site"] == "blocks.2.hook_resid_pre" and "gender" in rep["behaviour_after"]


def test_fit_store_streams_like_in_memory(toy_mixed):
    batch = mechwork.tasks.get("gender").prompts(120, seed=5)
    store = mechwork.cache.collect(toy_mixed, batch, ["resid_pre.1"], context=32, batch_size=8, progress=False)
    e = fit_store(store, "resid_pre.1", doc_labels=batch.labels, batch_size=100)
    keep = store.docs >= 0
    X, z = store["resid_pre.1"][keep], batch.labels[store.docs[keep]]
    torch.testing.assert_close(e(X), LEACE.fit(X, z)(X), atol=1e-4, rtol=0)
    assert e.config.site == "blocks.1.hook_resid_pre" and e.config.model == "toy-mixed"
    r = fit_store(store, "resid_pre.1", "rlace", doc_labels=batch.labels, max_steps=50)
    assert r.rank == 1 and r.is_orthogonal


def test_layer_sweep_probe_grid_and_figure(toy_mixed, tmp_path):
    rows = mechwork.erasure.layer_sweep(
        toy_mixed,
        "gender",
        ["resid_pre.0", "resid_pre.2"],
        ("leace", "rlace"),
        n_fit=150,
        n_eval=120,
        behaviour_n=32,
        tasks=("ioi",),
        probes=("linear",),
        method_options={"rlace": {"max_steps": 50}},
    )
    assert rows[0]["site"] is None and len(rows) == 5
    assert {r["label"] for r in rows[1:]} == {"leace [all]", "rlace [all]"}
    assert all(r["linear_accuracy_before"] > 0.9 for r in rows[1:] if r["site"] == "resid_pre.2")
    fig = mechwork.erasure.plot_sweep(rows, tasks=("ioi",))
    traces = {t.name: t for t in fig.data}
    for label in ("leace [all]", "rlace [all]"):  # each curve carries its method's rows, site by site
        rs = [r for r in rows[1:] if r["label"] == label]
        assert list(traces[f"{label}: linear probe"].x) == [r["site"] for r in rs]
        assert list(traces[f"{label}: linear probe"].y) == [r["linear_accuracy"] for r in rs]
        assert list(traces[f"{label}: ioi"].y) == [r["ioi_accuracy"] for r in rs]
    first = [r for r in rows[1:] if r["label"] == "leace [all]"]
    assert list(traces["majority rate"].y) == [r["majority"] for r in first]
    assert set(traces["clean model: ioi"].y) == {rows[0]["ioi_accuracy"]}
    assert list(traces["linear probe, no erasure"].y) == [r["linear_accuracy_before"] for r in first]
    grid = mechwork.erasure.probe_grid(toy_mixed, "gender", ["resid_pre.0", "resid_pre.2"], n=120)
    acc = grid["accuracy"]
    assert acc.shape == (2, len(grid["positions"])) and grid["positions"][1].startswith("1: ")
    assert acc[0, 1] > 0.9 and acc[1, -1] > 0.9  # the name carries gender at layer 0; the last token by layer 2
    assert acc[0, -1] < 0.75  # ...but not yet at the last position in the embeddings


def test_cli_fit_eval(tmp_path, capsys):
    out = tmp_path / "e"
    assert (
        main(
            [
                "erase",
                "fit",
                "toy-mixed",
                "--site",
                "resid_pre.1",
                "--method",
                "inlp",
                "--n-iter",
                "2",
                "--n",
                "150",
                "--out",
                str(out),
                "--no-eval",
            ]
        )
        == 0
    )
    assert "fitted Eraser(method='inlp'" in capsys.readouterr().out
    assert main(["erase", "eval", str(out), "--n", "150", "--behaviour-n", "32"]) == 0
    text = capsys.readouterr().out
    assert "linear" in text and "ioi" in text and "gender" in text
    rep = json.loads((out / "eval.json").read_text())
    assert rep["probes"]["rank"] == mechwork.erasure.load(out).rank
    assert main(["erase", "fit", "toy-mixed", "--site", "resid_pre.9", "--out", str(tmp_path / "x")]) == 2
    assert "resid_pre" in capsys.readouterr().err
    assert (
        main(
            [
                "erase",
                "sweep",
                "toy-mixed",
                "--sites",
                "resid_pre.0,resid_pre.2",
                "--n",
                "120",
                "--n-eval",
                "120",
                "--behaviour-n",
                "16",
                "--stratify",
                "position",
                "--out",
                str(tmp_path / "sw"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["site"] for r in rows] == [None, "resid_pre.0", "resid_pre.2"]
    assert (
        rows[1]["positions"] == "all/stratified-by-position"
        and (tmp_path / "sw" / "sweep.html").stat().st_size > 100_000
    )
