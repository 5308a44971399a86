"""Embedding-space projection, checked by value: the logit lens's last layer is the model's own output on both
backends, and the OV / QK / neuron projections equal the dense weight products (computed here in float64)."""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.projection import logit_lens, project


@pytest.fixture(scope="module")
def tokens():
    return mechwork.tasks.get("ioi").prompts(4, seed=3).clean


def test_logit_lens_last_layer_is_the_model_output(toy_mixed_any, tokens):
    model = toy_mixed_any
    lens = logit_lens(model, tokens, pos=None)
    with torch.inference_mode():
        logits = model(tokens)
    assert lens.labels[-1] == f"L{model.cfg.n_layers - 1}" and lens.logits.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(lens.logits[-1], logits, atol=1e-5, rtol=1e-5)
    # an intermediate layer is not the output (the lens reads each layer, not the last one n times)
    assert (lens.logits[1] - logits).abs().max() > 1e-2
    # the default (last position) reads the same numbers as the full read at that position
    torch.testing.assert_close(logit_lens(model, tokens).logits[:, :, 0], lens.logits[:, :, -1])


def test_logit_lens_equal_on_both_backends(toy_mixed, toy_mixed_bridge, tokens):
    a, b = logit_lens(toy_mixed, tokens, pos=None), logit_lens(toy_mixed_bridge, tokens, pos=None)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)


def _w(model, name: str, layer: int | None = None, head: int | None = None) -> torch.Tensor:
    w = getattr(model, name)
    if layer is not None:
        w = w[layer]
    if head is not None:
        w = w[head]
    return w.detach().double()


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 1)])
def test_ov_and_qk_projections_equal_dense_products(toy_induction, layer, head):
    m = toy_induction
    W_E, W_U = _w(m, "W_E"), _w(m, "W_U")
    ov = torch.einsum(
        "sd,dh,he,ev->sv", W_E, _w(m, "W_V", layer, head), _w(m, "W_O", layer, head), W_U
    )  # source token -> output logits
    # the QK form includes the query and key biases (they change which key wins; see mechwork.projection.weights)
    q = W_E @ _w(m, "W_Q", layer, head) + _w(m, "b_Q", layer, head)
    k = W_E @ _w(m, "W_K", layer, head) + _w(m, "b_K", layer, head)
    qk = q @ k.T
    p_ov, p_qk = project(m, "ov", layer=layer, head=head), project(m, "qk", layer=layer, head=head)
    assert p_ov.matrix.shape == p_qk.matrix.shape == (m.cfg.d_vocab, m.cfg.d_vocab)
    scale_ov, scale_qk = float(ov.abs().max()), float(qk.abs().max())
    torch.testing.assert_close(p_ov.matrix.double(), ov, atol=1e-5 * scale_ov, rtol=0)
    torch.testing.assert_close(p_qk.matrix.double(), qk, atol=1e-5 * scale_qk, rtol=0)
    assert not torch.allclose(ov, qk, atol=1e-3 * scale_ov)  # the two kinds are different matrices


def test_ov_projection_same_on_both_backends(toy_mixed, toy_mixed_bridge):
    a = project(toy_mixed, "ov", layer=1, head=2).matrix
    b = project(toy_mixed_bridge, "ov", layer=1, head=2).matrix
    torch.testing.assert_close(a, b, atol=1e-4 * float(a.abs().max()), rtol=0)


def test_neuron_projections_equal_dense_products(toy_mixed):
    m, layer, neuron = toy_mixed, 1, 7
    out = _w(m, "W_out", layer)[neuron] @ _w(m, "W_U")
    into = _w(m, "W_E") @ _w(m, "W_in", layer)[:, neuron]
    torch.testing.assert_close(
        project(m, "neuron_out", layer=layer, neuron=neuron).matrix[0].double(), out, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        project(m, "neuron_in", layer=layer, neuron=neuron).matrix[0].double(), into, atol=1e-5, rtol=1e-5
    )
    d = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        project(m, d).matrix[0].double(), d.double() @ _w(m, "W_U"), atol=1e-5 * float(d.abs().max()), rtol=1e-5
    )
