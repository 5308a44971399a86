"""SAE neural operators: architecture equivalences that can fail, resolution behaviour, i/o, bad input."""

from __future__ import annotations

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import CheckpointError, ConfigError, ShapeError
from mechwork.sae.functional import FunctionDictionary, dictionary_recovery, shift_cosines


def _sae(arch: str, n: int = 16, c: int = 2, **kw):
    return ms.SAE(ms.SAEConfig(architecture=arch, d_in=c * n, input_shape=(c, n), **kw))


def test_full_mode_fno_emulates_a_full_width_cnn_exactly():
    """With every Fourier mode, the FNO's spectral convolutions are any circular convolution: copying a CNN's
    kernels into Fourier weights gives the same codes and reconstruction (the paper's equivalence condition)."""
    torch.manual_seed(0)
    n, c, K = 16, 2, 3
    cnn = _sae("cnn", n, c, d_sae=K, kernel=15)
    fno = _sae("fno", n, c, d_sae=K, modes=n // 2 + 1, local=False)
    with torch.no_grad():
        for p in cnn.parameters():
            p.normal_()
        enc_full = torch.zeros(K, c, n)
        for j in range(15):
            enc_full[..., (j - 7) % n] = cnn.enc_weight[..., j]
        fno.enc_weight.copy_(torch.view_as_real(torch.fft.rfft(enc_full).conj().resolve_conj()))
        fno.dec_weight.copy_(torch.view_as_real(torch.fft.rfft(cnn.concepts()).transpose(0, 1)))
        fno.b_enc.copy_(cnn.b_enc)
        fno.b_dec.copy_(cnn.b_dec)
        x = torch.randn(5, c, n)
        assert (cnn.encode(x) > 0).any()
        assert torch.allclose(fno.encode(x), cnn.encode(x), atol=1e-4)
        assert torch.allclose(fno(x), cnn(x), atol=1e-4)
        # one mode fewer is no longer the same operator
        fewer = _sae("fno", n, c, d_sae=K, modes=n // 2, local=False)
        fewer.load_state_dict(
            {k: v[..., : n // 2, :] if k.endswith("weight") else v for k, v in fno.state_dict().items()}
        )
        assert not torch.allclose(fewer(x), cnn(x), atol=1e-3)


def test_fno_is_defined_on_functions_not_grids():
    torch.manual_seed(0)
    fno = _sae("fno", 32, 1, d_sae=4, modes=9)
    with torch.no_grad():
        c64, c128 = fno.concepts(64), fno.concepts(128)
        assert torch.allclose(c64, c128[..., ::2], atol=1e-5)  # samples of one function
        s = torch.arange(128) / 128
        z = (1 + torch.cos(2 * torch.pi * 3 * s)).expand(4, 128)[None]  # a smooth code density
        assert torch.allclose(fno.decode(z[..., ::2]), fno.decode(z)[..., ::2], atol=1e-5)
        x = torch.randn(1, 1, 32)
        assert fno(x).shape == (1, 1, 32) and fno(torch.randn(2, 1, 96)).shape == (2, 1, 96)
    flat = _sae("lifted", 32, 1, d_sae=40, k=3, lift=2)
    with pytest.raises(ShapeError):
        flat(torch.randn(2, 1, 64))  # the lifted SAE lives on its training grid


def test_function_dictionary_and_recovery_metric():
    fd = FunctionDictionary()
    x = fd.sample(50, 64, seed=0)
    assert x.shape == (50, 1, 64) and torch.isfinite(x).all()
    pos, amp = fd.codes(50, seed=0)
    assert torch.allclose(fd.render(pos, amp, 128)[..., ::2], fd.render(pos, amp, 64), atol=1e-6)
    true = fd.concepts(64)
    shifted = torch.roll(true, 5, dims=-1)[torch.randperm(8)]
    rec = dictionary_recovery(torch.cat([shifted, torch.randn(3, 64)]), true)
    assert rec["mcc"] == pytest.approx(1.0, abs=1e-6) and rec["sine_max"] < 1e-3
    noisy = dictionary_recovery(true + 0.5 * torch.randn(8, 64), true)
    assert noisy["mcc"] < 0.99
    cos, shift = shift_cosines(true[:1], torch.roll(true[:1], 7, dims=-1))
    assert float(cos) == pytest.approx(1.0, abs=1e-6) and int(shift) == 57


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("lifted", dict(d_sae=24, k=2, lift=2)),
        ("cnn", dict(d_sae=3, kernel=5)),
        ("fno", dict(d_sae=3, modes=5, lift=2)),
    ],
)
def test_operator_folders_round_trip_and_load_in_saelens_after_the_import(arch, kw, tmp_path):
    x = torch.randn(256, 2, 16)
    sae = ms.train(
        ms.TrainConfig(saes=(ms.SAEConfig(architecture=arch, **kw),), batch_size=64, lr=3e-3), x, progress=False
    ).sae
    sae.save(tmp_path / "s", card={"note": "x"})
    back = ms.load(tmp_path / "s")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    with torch.no_grad():
        assert torch.equal(back(x[:4]), sae(x[:4]))
    other = "cnn" if arch != "cnn" else "fno"
    with pytest.raises(CheckpointError, match=f"holds a '{arch}' SAE, not '{other}'"):
        ms.load(tmp_path / "s", architecture=other)
    pytest.importorskip("sae_lens")
    import sae_lens

    import mechwork.sae.saelens  # noqa: F401

    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    assert theirs.cfg.architecture() == f"mechwork_{arch} (import mechwork.sae.saelens)"
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x[:4]), sae.encode(x[:4]), atol=1e-6)
        assert torch.allclose(theirs(x[:4]), sae(x[:4]), atol=1e-5)


def test_operator_bad_input():
    with pytest.raises(
        ConfigError, match=r"take functions, \[batch, channels, grid\]; the per-sample shape is \(64,\)"
    ):
        ms.train(ms.TrainConfig(saes=(ms.SAEConfig(architecture="fno", d_sae=4),), batch_size=8), torch.randn(64, 64))
    with pytest.raises(ConfigError, match="modes=40 needs a grid of at least 78 points; the grid has n=64"):
        ms.train(
            ms.TrainConfig(saes=(ms.SAEConfig(architecture="fno", d_sae=4, modes=40),), batch_size=8),
            torch.randn(64, 1, 64),
        )
    with pytest.raises(ConfigError, match="kernel=21 is wider than the grid n=16"):
        _sae("cnn", 16, 1, d_sae=2, kernel=21)
    fno = _sae("fno", 16, 2, d_sae=3, modes=4)
    with pytest.raises(ShapeError, match="channels=2"):
        fno.encode(torch.randn(4, 3, 16))
    with pytest.raises(ConfigError, match="applies to TopK SAEs only"):
        fno.encode(torch.randn(4, 2, 16), k=2)
    with pytest.raises(ConfigError, match="normalize='none'"):
        ms.SAEConfig(architecture="cnn", normalize="scale")
