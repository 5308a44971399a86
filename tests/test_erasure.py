"""Erasure math on synthetic data: the LEACE test-suite invariants and equality with concept-erasure, INLP's
projection, R-LACE's rank-k projection and the paper's claim against rank-1 INLP, the artefact, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

import mechwork
from mechwork.erasure import INLP, LEACE, RLACE, Eraser, ErasureWarning, LeaceFitter
from mechwork.erasure.probes import sklearn_probe_score

torch.set_num_threads(1)


def classification(n_classes: int, *, n: int = 2048, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=min(d, max(4, n_classes * 2)),
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return torch.from_numpy(X), torch.from_numpy(y)


def anisotropic(*, n: int = 4000, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The METHODS 8.7 recipe: informative + redundant features mixed by a random Gaussian matrix."""
    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=8, n_redundant=8, class_sep=1.5, random_state=seed
    )
    M = np.random.default_rng(seed).standard_normal((d, d)) * 0.5
    return torch.from_numpy(X @ M).float(), torch.from_numpy(y)


def class_means(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([X[y == c].mean(0) for c in y.unique()])


def held_out_probe(eraser: Eraser, X: torch.Tensor, y: torch.Tensor) -> float:
    E = eraser(X).numpy()
    h = len(E) // 2
    return sklearn_probe_score("linear", E[:h], y[:h].numpy(), E[h:], y[h:].numpy()).accuracy


# --- LEACE ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_leace_invariants(n_classes):
    X, y = classification(n_classes)
    eraser = LEACE.fit(X, y)
    Xe = eraser(X)
    scale = X.abs().max()
    # class means equal after erasure, unequal before
    assert (class_means(X, y) - X.mean(0)).abs().max() > 0.05
    assert (class_means(Xe, y) - Xe.mean(0)).abs().max() < 1e-9 * scale
    # unpenalised logistic regression on centred data: coefficients vanish after, not before
    before = LogisticRegression(penalty=None, max_iter=1000).fit((X - X.mean(0)).numpy(), y.numpy())
    after = LogisticRegression(penalty=None, max_iter=1000).fit((Xe - Xe.mean(0)).numpy(), y.numpy())
    assert np.abs(before.coef_).max() > 0.05
    assert np.abs(after.coef_).max() < 1e-6
    # idempotence, rank <= classes - 1, mean preserved
    torch.testing.assert_close(eraser(Xe), Xe, atol=1e-9 * scale, rtol=0)
    assert torch.linalg.matrix_rank(X - Xe, rtol=1e-8) <= n_classes - 1
    assert eraser.rank == n_classes - 1
    torch.testing.assert_close(Xe.mean(0), X.mean(0), atol=1e-9 * scale, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("shrinkage", [False, True])
def test_leace_equals_concept_erasure(n_classes, shrinkage):
    from concept_erasure import LeaceEraser

    X, y = classification(n_classes, d=24, n=1500, seed=1)
    z = y.double() if n_classes == 2 else torch.nn.functional.one_hot(y, n_classes).double()
    peer = LeaceEraser.fit(X, z, shrinkage=shrinkage)
    ours = LEACE.fit(X, y, shrinkage=shrinkage)
    assert X.dtype == torch.float64  # float64 on both sides: the two solve the same problem to rounding error
    torch.testing.assert_close(ours(X), peer(X), atol=1e-10 * float(X.abs().max()), rtol=0)
    torch.testing.assert_close(ours.projection, peer.P, atol=1e-10, rtol=0)
    # float32 input: same answer up to float32 rounding of the statistics
    ours32 = LEACE.fit(X.float(), y, shrinkage=shrinkage)
    torch.testing.assert_close(ours32(X.float()).double(), peer(X), atol=1e-4 * float(X.abs().max()), rtol=0)


def test_leace_is_least_squares_in_every_norm():
    """LEACE's edit is no larger than the orthogonal (SAL) eraser's in random PSD inner products."""
    X, y = classification(3, d=16, seed=2)
    X = X @ torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # correlated features
    leace, orth = LEACE.fit(X, y), LEACE.fit(X, y, method="orth")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        B = torch.randn(16, 16, generator=g, dtype=torch.float64)
        M = B @ B.T
        cost = lambda e, M=M: torch.einsum("ni,ij,nj->", e(X) - X, M, e(X) - X) / len(X)  # noqa: E731
        assert cost(leace) <= cost(orth) * (1 + 1e-9)
    # and the SAL eraser is orthogonal and guards as well
    assert orth.is_orthogonal and not leace.is_orthogonal
    Xo = orth(X)
    assert (class_means(Xo, y) - Xo.mean(0)).abs().max() < 1e-9 * X.abs().max()


def test_leace_streaming_matches_one_shot():
    X, y = classification(3, n=1000, d=12, seed=3)
    fitter = LeaceFitter(12, n_classes=3)
    for lo in range(0, 1000, 137):  # uneven batches
        fitter.update(X[lo : lo + 137], y[lo : lo + 137])
    Z = torch.nn.functional.one_hot(y, 3).double()
    torch.testing.assert_close(fitter.sigma_xx, torch.cov(X.T), atol=1e-10, rtol=0)
    torch.testing.assert_close(fitter.sigma_xz, torch.cov(torch.cat([X, Z], 1).T)[:12, 12:], atol=1e-10, rtol=0)
    first = fitter.eraser
    torch.testing.assert_close(first(X), LEACE.fit(X, y)(X), atol=1e-8, rtol=0)
    fitter.update(X[:10], y[:10])  # the cached eraser is invalidated by an update
    assert fitter.eraser is not first


def test_leace_continuous_concept():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(800, 10, generator=g, dtype=torch.float64)
    z = X[:, 0] * 2 + 0.3 * torch.randn(800, generator=g, dtype=torch.float64)
    Xe = LEACE.fit(X, z)(X)
    cov = ((Xe - Xe.mean(0)) * (z - z.mean())[:, None]).mean(0)
    assert cov.abs().max() < 1e-10


# --- INLP ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes,classifier", [(2, "logistic"), (2, "svm"), (3, "logistic")])
def test_inlp_projection(n_classes, classifier):
    X, y = classification(n_classes, n=1200, d=20, seed=4)
    eraser = INLP.fit(X, y, n_iter=6, classifier=classifier, stop_within=0.0)
    P = eraser.projection.double()
    torch.testing.assert_close(P, P.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-10, rtol=0)
    W = INLP.classifier_weights(eraser).double()
    assert W.shape[0] >= 6 and eraser.rank >= 6
    rel = (W @ P).norm(dim=1) / W.norm(dim=1)
    assert rel.max() < 1e-8, rel
    hist = eraser.card["history"]
    assert hist[0]["dev_accuracy"] > hist[-1]["dev_accuracy"]


def test_inlp_stops_near_majority():
    X, y = classification(2, n=1200, d=10, seed=5)
    eraser = INLP.fit(X, y, n_iter=9, stop_within=0.05)
    hist = eraser.card["history"]
    assert hist[-1].get("stopped") and eraser.rank == len(hist) - 1 < 9


# --- R-LACE --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank,n_classes", [(1, 2), (2, 3)])
def test_rlace_rank_k_orthogonal_projection(rank, n_classes):
    X, y = classification(n_classes, n=1500, d=16, seed=6)
    eraser = RLACE.fit(X.float(), y, rank=rank, max_steps=150)
    P = eraser.projection.double()
    assert eraser.rank == rank and eraser.is_orthogonal
    torch.testing.assert_close(P, P.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-6, rtol=0)
    ev = torch.linalg.eigvalsh(P)
    assert torch.allclose(ev[:rank], torch.zeros(rank, dtype=ev.dtype), atol=1e-6)
    assert torch.allclose(ev[rank:], torch.ones(16 - rank, dtype=ev.dtype), atol=1e-6)
    lam = eraser.extras["relaxed_eigenvalues"]
    assert abs(float(lam.sum()) - rank) < 1e-3 and float(lam.min()) >= -1e-6 and float(lam.max()) <= 1 + 1e-6


def test_rlace_beats_rank1_inlp_on_anisotropic_data():
    """The paper's claim: a rank-1 R-LACE projection guards (probe within 3 points of majority), rank-1 INLP not."""
    X, y = anisotropic()
    Xf, yf, Xt, yt = X[:2500], y[:2500], X[2500:], y[2500:]
    majority = max(float(yt[750:].float().mean()), 1 - float(yt[750:].float().mean()))
    rlace = RLACE.fit(Xf, yf, rank=1)
    inlp = INLP.fit(Xf, yf, n_iter=1, stop_within=0.0)
    assert rlace.rank == inlp.rank == 1
    acc_r, acc_i = held_out_probe(rlace, Xt, yt), held_out_probe(inlp, Xt, yt)
    assert abs(acc_r - majority) < 0.03, (acc_r, majority)
    assert acc_i > majority + 0.2, (acc_i, majority)
    assert rlace.card["best_step"] > 0  # found by the game, from the paper's random start


def test_rlace_reference_schedule_and_sal_start_run():
    X, y = classification(2, n=600, d=8, seed=7)
    ref = RLACE.fit(X.float(), y, schedule="reference", max_steps=30, eval_every=10)
    assert ref.card["steps"] == 30 and ref.card["schedule"] == "reference" and ref.is_orthogonal
    assert ref.card["normalise"] is False and RLACE.fit(X.float(), y).card["normalise"] is True
    # the reference schedule on normalised data (the benchmark's row B): a global rescaling of the data is undone
    # by the normalisation, so the game and its projection are unchanged
    a = RLACE.fit(X.float(), y, schedule="reference", normalise=True, max_steps=30, eval_every=10)
    b = RLACE.fit(7.0 * X.float(), y, schedule="reference", normalise=True, max_steps=30, eval_every=10)
    assert a.card["normalise"] is True and a.rank == 1
    torch.testing.assert_close(a.projection, b.projection, atol=1e-4, rtol=0)
    sal = RLACE.fit(X.float(), y, init="sal", max_steps=25)
    assert sal.card["history"][0]["accuracy"] < 0.6  # the SAL start already guards a binary concept


# --- the artefact --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [LEACE(), INLP(n_iter=2), RLACE(max_steps=25)])
def test_eraser_roundtrip_and_shapes(tmp_path, method):
    X, y = classification(2, n=400, d=8, seed=8)
    eraser = method.fit_eraser(X.float(), y)  # a configured instance (fit is the classmethod)
    x = torch.randn(3, 5, 8)
    out = eraser(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.reshape(-1, 8), eraser(x.reshape(-1, 8)))
    eraser.save(tmp_path / "e")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "card.json",
        "cfg.json",
        "eraser.safetensors",
        "eraser.safetensors.sha256",
    ]
    back = mechwork.erasure.load(tmp_path / "e")
    torch.testing.assert_close(back(x), out)
    assert back.config == eraser.config and back.rank == eraser.rank
    assert set(back.extras) == set(eraser.extras)


def test_eraser_load_rejects_bad_files(tmp_path):
    X, y = classification(2, n=300, d=6, seed=9)
    LEACE.fit(X, y).save(tmp_path / "e")
    w = tmp_path / "e" / "eraser.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(mechwork.CheckpointError, match="eraser.safetensors"):
        mechwork.erasure.load(tmp_path / "e")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "cfg.json").write_text('{"format": "something-else"}')
    with pytest.raises(mechwork.CheckpointError, match="cfg.json"):
        mechwork.erasure.load(tmp_path / "f")


# --- bad input -----------------------------------------------------------------------------------------------
def test_bad_input():
    X, y = classification(2, n=200, d=8, seed=10)
    for method in (LEACE, INLP, RLACE):
        with pytest.raises(mechwork.DataError, match="single class"):
            method.fit(X, torch.zeros(200, dtype=torch.long))
        with pytest.raises(mechwork.ShapeError, match="199"):
            method.fit(X, y[:199])
        Xn = X.clone()
        Xn[3, 2] = float("nan")
        with pytest.raises(mechwork.NonFiniteError, match="NaN"):
            method.fit(Xn, y)
        with pytest.raises(mechwork.ConfigError, match="no option"):
            method.fit(X, y, not_an_option=1)
    with pytest.raises(mechwork.ConfigError, match="smaller than the dimension"):
        RLACE.fit(X, y, rank=8)
    with pytest.raises(mechwork.ConfigError, match="class labels"):
        INLP.fit(X, torch.linspace(0, 1, 200))
    eraser = LEACE.fit(X, y)
    with pytest.raises(mechwork.ShapeError, match="width 9"):
        eraser(torch.zeros(4, 9))


def test_fewer_samples_than_dimensions_warns_about_shrinkage():
    X, y = classification(2, n=20, d=32, seed=11)
    with pytest.warns(ErasureWarning, match="shrinkage=True"):
        e = LEACE.fit(X, y)
    with pytest.warns(ErasureWarning, match="n=20"):
        LEACE.fit(X, y, shrinkage=True)
    Xe = e(X)  # the in-sample guard still holds
    assert (class_means(Xe, y) - Xe.mean(0)).abs().max() < 1e-8 * X.abs().max()
