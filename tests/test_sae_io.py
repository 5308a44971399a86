"""SAE folders: mechwork round trip, SAELens loads mechwork folders (same encode/decode), mechwork loads SAELens
folders, and truncated / foreign folders fail with a message naming the file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import CheckpointError
from mechwork.sae.model import SAE

SETTINGS = [("topk", "none"), ("topk", "scale"), ("topk", "layer_norm"), ("relu", "scale"), ("relu", "none")]


@pytest.fixture(scope="module")
def sae_lens():
    sl = pytest.importorskip("sae_lens")
    ms.register_saelens()
    return sl


def _trained(arch: str, norm: str, alpha: float = 1.0) -> tuple[SAE, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(3000, 24) * 3 + 0.5
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=80, k=5, alpha=alpha, architecture=arch, normalize=norm, l1_coefficient=0.2),),
        batch_size=250,
        tokens=250 * 6,
        lr=3e-3,
    )
    return ms.train(cfg, x, progress=False).sae, x[:200]


@pytest.mark.parametrize("arch,norm", SETTINGS)
def test_mechwork_round_trip_is_exact(arch, norm, tmp_path):
    sae, x = _trained(arch, norm)
    sae.meta.update(model="toy-mixed", site="blocks.1.hook_resid_post")
    sae.save(tmp_path / "s", card={"fvu": 0.1})
    back = ms.load(tmp_path / "s")
    assert back.cfg == sae.cfg and back.meta == sae.meta and ms.read_card(tmp_path / "s") == {"fvu": 0.1}
    for (n, p), q in zip(sae.state_dict().items(), back.state_dict().values()):
        assert torch.equal(p, q), n
    assert torch.equal(back(x), sae(x))


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("arch,norm", SETTINGS)
def test_saelens_loads_mechwork_folders(sae_lens, arch, norm, portable, tmp_path):
    sae, x = _trained(arch, norm, alpha=1.6 if arch == "topk" else 1.0)
    sae.save(tmp_path / "s", portable=portable)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    expected = {"topk": "topk", "relu": "standard"}[arch] if portable else f"mechwork_{arch}"
    assert theirs.cfg.architecture() == expected
    with torch.no_grad():
        f_ours, f_theirs = sae.encode(x), theirs.encode(x)
        assert torch.allclose(f_ours, f_theirs, atol=1e-5, rtol=1e-5)
        assert torch.allclose(sae.decode(f_ours), theirs.decode(f_theirs), atol=1e-5, rtol=1e-5)
        assert torch.allclose(sae(x), theirs(x), atol=1e-5, rtol=1e-5)
    if arch == "topk":
        assert int((f_theirs != 0).sum(-1).max()) == 8  # alpha * k = 1.6 * 5
    if portable:  # mechwork reads the portable folder as a SAELens folder: same function
        assert torch.allclose(ms.load(tmp_path / "s")(x), sae(x), atol=1e-5, rtol=1e-5)


def _random_saelens(sae_lens, kind: str):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    meta = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="toy-mixed")
    if kind == "topk":
        s = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=6, rescale_acts_by_decoder_norm=True, metadata=meta))
    elif kind == "jumprelu":
        s = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=40, metadata=meta))
    else:
        s = StandardSAE(StandardSAEConfig(d_in=16, d_sae=40, normalize_activations="layer_norm", metadata=meta))
    with torch.no_grad():
        for p in s.parameters():
            p.normal_(0, 0.3)
        s.W_dec.mul_(torch.rand(40, 1) + 0.5)  # decoder rows of unequal norms
        if kind == "jumprelu":
            s.threshold.uniform_(0.0, 0.3)
    return s


@pytest.mark.parametrize("kind", ["topk", "standard", "jumprelu"])
def test_mechwork_loads_saelens_folders(sae_lens, kind, tmp_path):
    theirs = _random_saelens(sae_lens, kind)
    theirs.save_model(str(tmp_path / "s"))
    ours = ms.load(tmp_path / "s")
    assert ours.site == "blocks.0.hook_resid_post" and ours.meta["model"] == "toy-mixed"
    x = torch.randn(100, 16) * 2
    with torch.no_grad():
        f_t = theirs.encode(x)
        assert (f_t != 0).any()
        assert torch.allclose(ours.encode(x), f_t, atol=1e-5, rtol=1e-5)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_truncated_and_foreign_folders_name_the_file(tmp_path):
    sae, _ = _trained("topk", "none")
    sae.save(tmp_path / "s")
    w = tmp_path / "s" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors"):
        ms.load(tmp_path / "s")
    sae.save(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cfg.json"):
        ms.load(tmp_path / "s")
    with pytest.raises(CheckpointError, match="no SAE folder"):
        ms.load(tmp_path / "missing")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(CheckpointError, match="architecture 'gated' is not supported"):
        ms.load(tmp_path / "s")
    from mechwork.core.io import save_tensors

    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    save_tensors(
        tmp_path / "s" / "sae_weights.safetensors",
        {
            "W_enc": torch.zeros(24, 80),
            "b_enc": torch.zeros(80),
            "W_dec": torch.zeros(80, 23),
            "b_dec": torch.zeros(24),
        },
    )
    with pytest.raises(CheckpointError, match=r"W_dec has shape \(80, 23\), expected \(80, 24\)"):
        ms.load(tmp_path / "s")
    save_tensors(tmp_path / "s" / "sae_weights.safetensors", {"b_enc": torch.zeros(80)})
    with pytest.raises(CheckpointError, match="no tensor 'W_enc'"):
        ms.load(tmp_path / "s")


def test_saelens_registration_after_a_later_import(tmp_path):
    """`import mechwork.sae` first, `import sae_lens` later: the post-import hook registers the architectures."""
    sae, x = _trained("topk", "scale")
    sae.save(tmp_path / "s")
    code = (
        "import sys, torch, mechwork.sae\n"
        "assert 'sae_lens' not in sys.modules\n"
        "import sae_lens\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "assert 'mechwork_topk' in SAE_CLASS_REGISTRY and 'mechwork_relu' in SAE_CLASS_REGISTRY\n"
        f"s = sae_lens.SAE.load_from_disk({str(tmp_path / 's')!r})\n"
        "print(type(s).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("MechworkTopKSAE")
