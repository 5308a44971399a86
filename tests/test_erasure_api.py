"""Public erasure helpers that no other test called: streaming LEACE fits and the removed subspace."""

from __future__ import annotations

import torch
from sklearn.datasets import make_classification

from mechwork.erasure import INLP, LEACE

torch.set_num_threads(1)


def _data(n_classes: int = 3, n: int = 1200, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=6, n_redundant=0, n_classes=n_classes, random_state=0
    )
    return torch.from_numpy(X), torch.from_numpy(y)


def test_fit_batches_equals_the_one_shot_fit():
    X, y = _data()
    full = LEACE.fit(X, y)
    batches = ((X[i : i + 250], y[i : i + 250]) for i in range(0, len(X), 250))  # uneven last batch
    streamed = LEACE().fit_batches(batches, d=X.shape[1], n_classes=3)
    assert streamed.rank == full.rank == 2
    torch.testing.assert_close(streamed(X), full(X), rtol=0, atol=1e-9)
    # concept matrices (one-hot) take the z_dim route to the same eraser
    onehot = torch.nn.functional.one_hot(y, 3).double()
    via_z = LEACE().fit_batches([(X, onehot)], d=X.shape[1], z_dim=3)
    torch.testing.assert_close(via_z(X), full(X), rtol=0, atol=1e-9)


def test_removed_basis_spans_the_edit():
    X, y = _data()
    for eraser in (LEACE.fit(X, y), INLP.fit(X, y, n_iter=3)):
        Q = eraser.removed_basis
        assert Q.shape == (X.shape[1], eraser.rank)
        torch.testing.assert_close(Q.T @ Q, torch.eye(eraser.rank, dtype=Q.dtype), rtol=0, atol=1e-9)
        edit = X - eraser(X)
        residual = edit - edit @ Q @ Q.T  # the part of the edit outside the basis
        assert residual.abs().max() < 1e-9 * edit.abs().max()
        # and every basis direction is used: the edit is not confined to a smaller subspace
        assert torch.linalg.matrix_rank(edit @ Q).item() == eraser.rank
