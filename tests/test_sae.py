"""SAE core on synthetic data: sparse == dense, dictionary recovery, sweeps, exact resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import CheckpointError, ConfigError, NonFiniteError, ShapeError
from mechwork.sae.checkpoint import read_trainer_json
from mechwork.sae.model import SAE, geometric_median
from mechwork.sae.synthetic import SyntheticDictionary, recovery


@pytest.fixture(scope="module")
def synth():
    sd = SyntheticDictionary(d=32, n_features=64, n_active=3, seed=0)
    x, _ = sd.sample(24000, seed=1)
    return sd, x


def _pair(cfg: ms.SAEConfig, x: torch.Tensor) -> tuple[SAE, SAE]:
    a = SAE(cfg)
    a.init_from_data(x)
    with torch.no_grad():
        a.b_enc.normal_(0, 0.1)
    b = SAE(cfg)
    b.load_state_dict(a.state_dict())
    return a, b


def test_sparse_gradients_match_dense_reference():
    torch.manual_seed(0)
    x = torch.randn(300, 48) * 2 + 0.3
    cfg = ms.SAEConfig(d_in=48, d_sae=200, k=7, k_aux=20)
    a, b = _pair(cfg, x)
    dead = torch.zeros(200, dtype=torch.bool)
    dead[::3] = True  # AuxK active on a third of the latents
    oa = a.training_loss(x, step=0, total_steps=10, dead=dead, sparse=True)
    ob = b.training_loss(x, step=0, total_steps=10, dead=dead, sparse=False)
    assert float(oa.aux) > 0
    assert torch.allclose(oa.loss, ob.loss, rtol=1e-6, atol=1e-7)
    oa.loss.backward()
    ob.loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        scale = float(q.grad.abs().max())
        assert scale > 0, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6 * scale), name


def test_sparse_training_run_matches_dense(synth):
    _, x = synth
    base = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=96, k=4, dead_tokens=512, k_start=12),),
        batch_size=256,
        tokens=256 * 25,
        lr=3e-3,
        warmup_steps=5,
        log_every=5,
    )
    rs = ms.train(base, x, progress=False)
    rd = ms.train(base.replace(sparse=False), x, progress=False)
    for p, q in zip(rs.sae.parameters(), rd.sae.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)
    assert [h["fvu"] for h in rs.history] == pytest.approx([h["fvu"] for h in rd.history], rel=1e-4)


def test_topk_recovers_synthetic_dictionary(synth):
    sd, x = synth
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=128, k=3),), batch_size=256, tokens=24000 * 3, lr=3e-3, warmup_steps=20
    )
    res = ms.train(cfg, x, progress=False)
    rec = recovery(res.sae.W_dec, sd.features)
    assert rec["mmcs"] >= 0.9, rec
    ev = ms.evaluate(res.sae, None, sd.sample(4000, seed=99)[0])
    assert ev["l0"] == pytest.approx(3.0)
    assert ev["fvu"] < 0.15


def test_relu_baseline_trains(synth):
    sd, x = synth
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(architecture="relu", d_sae=128, l1_coefficient=0.3),),
        batch_size=256,
        tokens=24000 * 2,
        lr=3e-3,
        warmup_steps=20,
    )
    res = ms.train(cfg, x, progress=False)
    ev = ms.evaluate(res.sae, None, sd.sample(4000, seed=99)[0])
    assert ev["fvu"] < 0.3 and ev["l0"] < 40, ev
    assert recovery(res.sae.W_dec, sd.features)["mmcs"] > 0.7


def test_sweep_equals_separate_runs(synth):
    _, x = synth
    a, b = ms.SAEConfig(d_sae=64, k=3, seed=1), ms.SAEConfig(d_sae=96, k=5, seed=2)
    kw = dict(batch_size=256, tokens=256 * 12, lr=2e-3)
    both = ms.train(ms.TrainConfig(saes=(a, b), **kw), x, progress=False)
    alone = [ms.train(ms.TrainConfig(saes=(c,), **kw), x, progress=False).sae for c in (a, b)]
    for s, t in zip(both.saes, alone):
        for p, q in zip(s.parameters(), t.parameters()):
            assert torch.equal(p, q)


def test_exact_resume_equals_uninterrupted_run(synth, tmp_path):
    _, x = synth
    sae = ms.SAEConfig(d_sae=96, k=3, dead_tokens=256, k_start=9, normalize="scale")
    cfg = ms.TrainConfig(
        saes=(sae, sae.replace(seed=1, k=4)),
        batch_size=128,
        tokens=128 * 30,
        lr=3e-3,
        warmup_steps=4,
        log_every=3,
        checkpoint_every=6,
        data_seed=3,
        out=str(tmp_path / "full"),
    )
    full = ms.train(cfg, x, progress=False)
    part = ms.train(cfg.replace(out=str(tmp_path / "part")), x, progress=False, stop_at_step=13)
    assert part.stopped_early and part.steps == 13
    resumed = ms.train(cfg.replace(out=str(tmp_path / "part"), log_every=3), x, progress=False, resume=True)
    assert resumed.steps == full.steps
    for s, t in zip(full.saes, resumed.saes):
        for p, q in zip(list(s.parameters()) + list(s.buffers()), list(t.parameters()) + list(t.buffers())):
            assert torch.equal(p, q)
    assert full.history == resumed.history
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(full.history)


def test_resume_refuses_a_different_config(synth, tmp_path):
    _, x = synth
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=64, k=3),), batch_size=128, tokens=128 * 10, out=str(tmp_path), checkpoint_every=2
    )
    ms.train(cfg, x, progress=False, stop_at_step=4)
    with pytest.raises(ConfigError, match=r"lr: checkpoint None vs now 0\.01"):
        ms.train(cfg.replace(lr=0.01), x, progress=False, resume=True)
    with pytest.raises(ConfigError, match="saes"):
        ms.train(cfg.replace(saes=(ms.SAEConfig(d_sae=64, k=4),)), x, progress=False, resume=True)
    with pytest.raises(CheckpointError):
        ms.train(cfg.replace(out=str(tmp_path / "none")), x, progress=False, resume=True)
    state = tmp_path / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="state.safetensors"):
        ms.train(cfg, x, progress=False, resume=True)
    (tmp_path / "checkpoint" / "trainer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="trainer.json has no 'step'"):
        ms.train(cfg, x, progress=False, resume=True)


def test_nan_in_activations_stops_with_step_and_keeps_checkpoint(synth, tmp_path):
    _, x = synth
    batches = [x[i : i + 128].clone() for i in range(0, 128 * 8, 128)]
    batches[5][17, 3] = float("nan")
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=64, k=3, b_dec_init="zeros"),),
        batch_size=128,
        tokens=128 * 8,
        out=str(tmp_path),
        checkpoint_every=2,
    )
    with pytest.raises(NonFiniteError, match="sample used to initialise"):
        ms.train(cfg.replace(saes=(ms.SAEConfig(d_sae=64, k=3),)), batches, progress=False)
    with pytest.raises(
        NonFiniteError,
        match=r"activations of batch 5 contain NaN/inf \(rows \[17\].*last good checkpoint is .*checkpoint",
    ):
        ms.train(cfg, batches, progress=False)
    assert read_trainer_json(tmp_path / "checkpoint")["step"] == 4


def test_nan_loss_stops_and_names_the_cause(synth, tmp_path):
    _, x = synth
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=64, k=3),), batch_size=128, tokens=128 * 10, out=str(tmp_path), checkpoint_every=2
    )
    calls = {"n": 0}

    def joint(saes, outs, batch):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 6 else outs[0].loss.new_zeros(())

    with pytest.raises(NonFiniteError, match="step 5.*joint loss.*checkpoint"):
        ms.train(cfg, x, progress=False, joint_loss=joint)
    assert read_trainer_json(tmp_path / "checkpoint")["step"] == 4


def test_joint_loss_sees_every_sae_and_couples_them(synth):
    _, x = synth
    pair = (ms.SAEConfig(d_sae=64, k=3, seed=0), ms.SAEConfig(d_sae=64, k=3, seed=1))
    seen = []

    def agree(saes, outs, batch):
        seen.append((len(outs), outs[0].codes is not None, outs[1].x_hat.shape))
        return ((saes[0].W_dec - saes[1].W_dec) ** 2).sum()

    kw = dict(batch_size=128, tokens=128 * 30, lr=3e-2)
    coupled = ms.train(ms.TrainConfig(saes=pair, **kw), x, progress=False, joint_loss=agree)
    free = ms.train(ms.TrainConfig(saes=pair, **kw), x, progress=False)
    assert seen[0] == (2, True, (128, 32))
    gap = lambda r: float((r.saes[0].W_dec - r.saes[1].W_dec).detach().norm())  # noqa: E731
    assert gap(coupled) < 0.5 * gap(free)


def test_bad_configs_raise():
    with pytest.raises(ConfigError, match="k must be between"):
        ms.SAEConfig(d_sae=16, k=32)
    with pytest.raises(ConfigError, match="architecture"):
        ms.SAEConfig(architecture="gated")
    with pytest.raises(ConfigError, match="share the name"):
        ms.TrainConfig(saes=(ms.SAEConfig(), ms.SAEConfig()))
    with pytest.raises(ConfigError, match="unknown field"):
        ms.TrainConfig.from_dict({"batch_sise": 3})
    with pytest.raises(ShapeError, match=r"d_in=10 but the data \(the activations\) has width 8"):
        ms.train(
            ms.TrainConfig(saes=(ms.SAEConfig(d_in=10, d_sae=16, k=2),), batch_size=8),
            torch.randn(64, 8),
            progress=False,
        )
    with pytest.raises(ConfigError, match="no training data"):
        ms.train(ms.TrainConfig(), progress=False)
    with pytest.raises(ConfigError, match="tokens= is required"):
        ms.train(
            ms.TrainConfig(saes=(ms.SAEConfig(d_sae=16, k=2),), batch_size=8), iter([torch.randn(8, 4)]), progress=False
        )
    with pytest.raises(ShapeError):
        ms.train(
            ms.TrainConfig(saes=(ms.SAEConfig(d_sae=16, k=2),), batch_size=8),
            torch.arange(64).reshape(16, 4),
            progress=False,
        )


def test_iterator_source_and_schedules():
    sd = SyntheticDictionary(d=16, n_features=32, n_active=2, seed=3)
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=32, k=2, k_start=10, k_anneal=0.5),),
        batch_size=100,
        tokens=100 * 20,
        log_every=2,
        warmup_steps=4,
        decay_fraction=0.25,
    )
    res = ms.train(cfg, sd.batches(64), progress=False)
    ks = [h["k"] for h in res.history]
    assert ks[0] > ks[-1] == 2 and ks == sorted(ks, reverse=True)
    assert res.history[-1]["l0"] == pytest.approx(2.0)
    assert cfg.lr_factor(0, 20) == pytest.approx(0.25) and cfg.lr_factor(10, 20) == 1.0
    assert cfg.lr_factor(19, 20) == pytest.approx(0.0)
    assert [cfg.saes[0].k_at(s, 20) for s in (0, 5, 10, 15)] == [10, 6, 2, 2]


def test_encode_decode_shapes_alpha_and_normalisation():
    torch.manual_seed(0)
    x = torch.randn(2000, 24) * 5 + 1
    sae = SAE(ms.SAEConfig(d_in=24, d_sae=64, k=4, alpha=2.0, normalize="scale"))
    sae.init_from_data(x)
    assert float((x * sae.norm_scale).norm(dim=-1).mean()) == pytest.approx(math.sqrt(24), rel=1e-4)
    f = sae.encode(x[:10].reshape(2, 5, 24))
    assert f.shape == (2, 5, 64) and int((f[0, 0] != 0).sum()) <= 8
    assert int((sae.encode(x[:10], k=4) != 0).sum(-1).max()) <= 4
    assert torch.allclose(sae(x[:10]), sae.decode(sae.encode(x[:10])), atol=1e-5)
    with pytest.raises(ShapeError):
        sae.encode(torch.randn(3, 25))
    with pytest.raises(ConfigError):
        sae.encode(x[:3], k=65)


def test_geometric_median_is_robust_to_outliers():
    torch.manual_seed(0)
    x = torch.randn(1000, 8)
    x[:100] += 50.0
    gm = geometric_median(x)
    assert gm.norm() < 3.0 < x.mean(0).norm()


@pytest.fixture
def registry_restored():
    """Architectures registered by a test are removed afterwards (the registry is global state)."""
    from mechwork.sae import registry

    names = registry.names()
    yield
    for name in registry.names():
        if name not in names:
            registry.unregister(name)
    with pytest.raises(ConfigError, match="test_grid"):
        ms.SAEConfig(architecture="test_grid", d_sae=32, k=4)


def test_registered_architecture_with_non_flat_inputs_trains_saves_and_loads(tmp_path, registry_restored):
    """A new architecture (here a subclass taking [batch, channels, grid] inputs) reuses the trainer as is."""

    class GridSAE(SAE):
        pass

    ms.register_architecture("test_grid", GridSAE)
    x = torch.randn(1280, 2, 8)
    cfg = ms.TrainConfig(saes=(ms.SAEConfig(architecture="test_grid", d_sae=32, k=4),), batch_size=128, lr=3e-3)
    res = ms.train(cfg, x, progress=False)
    sae = res.sae
    assert isinstance(sae, GridSAE) and sae.input_shape == (2, 8) and res.steps == 10
    assert sae(x[:3]).shape == (3, 2, 8) and sae.encode(x[:3]).shape == (3, 32)
    sae.save(tmp_path / "g")
    back = ms.load(tmp_path / "g")
    assert isinstance(back, GridSAE) and torch.equal(back(x[:3]), sae(x[:3]))
    with pytest.raises(ShapeError, match=r"per-token shape \(2, 8\)"):
        ms.train(cfg.replace(saes=(sae.cfg,)), torch.randn(640, 4, 4), progress=False)


def test_wandb_logging_when_asked(synth, monkeypatch):
    """With ``wandb_project`` set, the run is opened with the config and every logged record reaches wandb under
    ``<sae>/<metric>`` at its step, with the values of the run's history (a recording stand-in for wandb)."""
    wandb = pytest.importorskip("wandb")
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, data, step=None):
            calls["log"].append((step, dict(data)))

        def finish(self):
            calls["finish"].append(True)

    monkeypatch.setattr(wandb, "init", lambda **kw: calls["init"].append(kw) or Run())
    _, x = synth
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=32, k=2),), batch_size=128, tokens=128 * 4, log_every=2, wandb_project="mechwork-test"
    )
    res = ms.train(cfg, x, progress=False)
    assert res.steps == 4 and len(calls["init"]) == 1 and len(calls["finish"]) == 1
    assert calls["init"][0]["project"] == "mechwork-test" and calls["init"][0]["config"] == res.config.to_dict()
    assert [step for step, _ in calls["log"]] == [r["step"] for r in res.history] == [2, 4]
    name = res.history[0]["sae"]
    for (_, logged), rec in zip(calls["log"], res.history):
        assert logged[f"{name}/loss"] == rec["loss"] and logged[f"{name}/l0"] == rec["l0"]
        assert logged[f"{name}/fvu"] == rec["fvu"] and 0 < rec["fvu"] < 1.5
