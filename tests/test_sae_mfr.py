"""MFR: the synthetic generator, the penalty and its matchings, tied SAEs as plain SAELens folders, runs,
resume, bad input, and the paper's claim on the synthetic data (a test that can fail)."""

from __future__ import annotations

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import ConfigError
from mechwork.sae.mfr import MutualFeaturePenalty, hungarian, matched_mmcs, max_mmcs, mfr_saes, warmup


def test_grouped_generator_draws_each_samples_support():
    g = ms.GroupedSynthetic(d=16, n_features=60, n_groups=5, n_active=4, decay=0.7, seed=0)
    x, c = g.sample(3000, seed=3)
    support = c > 0
    assert (support.sum(1) == 4).all() and torch.allclose(x, c @ g.features)
    group = (support.float() @ torch.eye(60)).argmax(1) // 12
    for gi in range(5):  # every support lies in one group, and samples of a group do not share one support
        rows = support[group == gi]
        assert rows[:, gi * 12 : (gi + 1) * 12].sum(1).eq(4).all()
        assert len({tuple(r.nonzero().flatten().tolist()) for r in rows}) > 50  # the per-chunk bug gives 1
    freq = support[group == 0].float().mean(0)[:12]
    assert freq[0] > 1.5 * freq[11]  # decay^rank favours the first features of a group
    with pytest.raises(ConfigError, match="smallest group"):
        ms.GroupedSynthetic(n_features=20, n_groups=10, n_active=3)


def test_matchings_agree_with_brute_force_and_each_other():
    torch.manual_seed(0)
    a = torch.randn(6, 5)
    perm = torch.randperm(6)
    b = a[perm] * torch.rand(6, 1).add(0.5)  # same directions, shuffled and rescaled
    cols = hungarian(a, b)
    assert torch.equal(b[cols], b[cols]) and torch.equal(perm[cols], torch.arange(6))
    assert float(matched_mmcs(a, b, cols)) == pytest.approx(1.0, abs=1e-6)
    c = torch.randn(9, 5)
    import itertools

    unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
    cos = unit(a) @ unit(c).t()
    brute = max(sum(cos[i, p[i]] for i in range(6)) for p in itertools.permutations(range(9), 6)) / 6
    assert float(matched_mmcs(a, c, hungarian(a, c))) == pytest.approx(float(brute), abs=1e-6)
    assert float(max_mmcs(a, c)) >= float(matched_mmcs(a, c, hungarian(a, c))) - 0.2
    assert warmup(0, 100) == 0.0 and warmup(50, 100) == pytest.approx(0.5) and warmup(100, 100) == 1.0


def test_tied_mfr_sae_is_a_plain_saelens_topk_folder(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    torch.manual_seed(0)
    x = torch.randn(1024, 12) * 2 + 1
    cfg = ms.TrainConfig(
        saes=mfr_saes(ms.SAEConfig(architecture="mfr", d_sae=32, k=3, normalize="scale"), 2),
        batch_size=128,
        lr=3e-3,
        mfr=ms.MFRPenalty(weight=1.0, warmup_steps=2),
        out=str(tmp_path / "run"),
    )
    res = ms.train(cfg, x, progress=False)
    a = res.saes[0]
    assert a.cfg.tied and "W_dec" not in dict(a.named_parameters()) and float(a.norm_scale) == 1.0
    folder = tmp_path / "run" / "saes" / a.cfg.label
    card = ms.read_card(folder)
    assert card["saelens"]["architecture"] == "topk" and list(card["mfr"]["partners"]) == [res.saes[1].cfg.label]
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    back = ms.load(folder)
    assert type(back) is ms.MFRSAE and back.cfg == a.cfg
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x[:50]), a.encode(x[:50]), atol=1e-5, rtol=1e-5)
        assert torch.allclose(back(x[:50]), a(x[:50]), atol=1e-6)


def test_mfr_bad_input_and_unequal_widths(tmp_path):
    x = torch.randn(512, 8)
    one = ms.SAEConfig(architecture="mfr", d_sae=16, k=2)
    with pytest.raises(ConfigError, match="needs at least 2 SAEs"):
        ms.TrainConfig(saes=(one,), mfr=ms.MFRPenalty())
    with pytest.raises(ConfigError, match="needs at least 2 SAEs"):
        mfr_saes(one, 1)
    with pytest.raises(ConfigError, match="are not TopK"):
        ms.TrainConfig(saes=(one, ms.SAEConfig(architecture="relu", d_sae=16)), mfr=ms.MFRPenalty())
    with pytest.raises(ConfigError, match="k_growth='linear' gives SAE 1 k=20 > d_sae=16"):
        mfr_saes(one.replace(k=10), 2, k_growth="linear")
    # different widths: the smaller dictionary is matched into the larger one
    saes = (one.replace(name="a"), one.replace(d_sae=24, seed=1, name="b"))
    res = ms.train(ms.TrainConfig(saes=saes, batch_size=128, mfr=ms.MFRPenalty(warmup_steps=0)), x, progress=False)
    pen = MutualFeaturePenalty(ms.MFRPenalty(warmup_steps=0))
    pen.begin_step(res.saes, 0, 1)
    assert 0 < float(pen(res.saes, [], x).detach()) < 0.1 * 2


def test_cached_matching_resumes_exactly(tmp_path):
    x = torch.randn(2048, 8)
    cfg = ms.TrainConfig(
        saes=mfr_saes(ms.SAEConfig(architecture="mfr", d_sae=16, k=2, tied=False), 3),
        batch_size=128,
        lr=3e-3,
        mfr=ms.MFRPenalty(weight=0.5, warmup_steps=3, matching="cached", refresh_every=5),
        checkpoint_every=4,
        out=str(tmp_path / "a"),
    )
    full = ms.train(cfg, x, progress=False)
    ms.train(cfg.replace(out=str(tmp_path / "b")), x, progress=False, stop_at_step=7)
    resumed = ms.train(cfg.replace(out=str(tmp_path / "b")), x, progress=False, resume=True)
    for s, r in zip(full.saes, resumed.saes):
        for p, q in zip(s.parameters(), r.parameters()):
            assert torch.equal(p, q)
