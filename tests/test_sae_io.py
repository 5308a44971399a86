"""SAE folders: mechwork round trip, SAELens loads mechwork folders (same encode/decode), mechwork loads SAELens
folders, and truncated / foreign folders fail with a message naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import CheckpointError
from mechwork.core.io import load_tensors, save_tensors
from mechwork.sae import shipped
from mechwork.sae.model import SAE

SETTINGS = [("topk", "none"), ("topk", "scale"), ("topk", "layer_norm"), ("relu", "scale"), ("relu", "none")]


@pytest.fixture(scope="module")
def sae_lens():
    sl = pytest.importorskip("sae_lens")
    ms.register_saelens()  # for the folders that need it (portable=False, legacy names)
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
    expected = (
        {"topk": "topk", "relu": "standard"}[arch] if portable else f"mechwork_{arch} (import mechwork.sae.saelens)"
    )
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


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_import_mechwork_sae_imports_no_saelens_and_installs_no_hook():
    out = _fresh_python(
        "import sys\nn = list(sys.meta_path)\nimport mechwork.sae\n"
        "assert 'sae_lens' not in sys.modules, 'sae_lens imported'\n"
        "assert sys.meta_path == n, sys.meta_path\nprint('ok')\n"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_cli_trained_topk_loads_in_plain_saelens_and_encodes_identically(tmp_path):
    """Issue 16 item 5: no mechwork import in the loading process; alpha-k and the input scale are folded."""
    from mechwork.cli import main

    out = tmp_path / "run"
    argv = ["sae", "train", "--model", "toy-induction-2l", "--site", "resid_post.1", "--tokens", "3072"]
    argv += ["--batch-size", "512", "--k", "4", "--width", "64", "--alpha", "1.5", "--normalize", "scale"]
    assert main([*argv, "--lr", "3e-3", "--out", str(out), "--no-progress"]) == 0
    folder = out / "saes" / "topk_k4_w64_s0"
    card = ms.read_card(folder)
    assert card["saelens"]["architecture"] == "topk" and card["saelens"]["loads_without_mechwork"] is True
    sae = ms.load(folder)
    torch.manual_seed(0)
    x = torch.randn(64, sae.d_in) * 4
    x2 = torch.randn(64, 128) * 3
    save_tensors(tmp_path / "x.safetensors", {"x": x, "x2": x2})
    code = (
        "import sys, sae_lens\nfrom safetensors.torch import load_file, save_file\n"
        f"s = sae_lens.SAE.load_from_disk({str(folder)!r})\n"
        f"d = load_file({str(tmp_path / 'x.safetensors')!r})\nx, x2 = d['x'], d['x2']\n"
        f"save_file({{'f': s.encode(x).detach(), 'y': s(x).detach()}}, {str(tmp_path / 'f.safetensors')!r})\n"
        f"g = sae_lens.SAE.load_from_disk({str(shipped.path('toy-mixed', shipped.SITES[0]))!r})\n"
        f"save_file({{'f': g.encode(x2).detach()}}, {str(tmp_path / 'g.safetensors')!r})\n"
        "assert not [m for m in sys.modules if m.startswith('mechwork')], 'mechwork was imported'\n"
        "print(type(s).__name__)\n"
    )
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "TopKSAE"
    theirs = load_tensors(tmp_path / "f.safetensors")
    with torch.no_grad():
        ours = sae.encode(x)
        assert int((ours != 0).sum(-1).max()) == 6  # round(1.5 * 4)
        assert torch.equal(ours != 0, theirs["f"] != 0)
        assert torch.allclose(ours, theirs["f"], atol=1e-5, rtol=1e-5)
        assert torch.allclose(sae(x), theirs["y"], atol=1e-5, rtol=1e-5)
        # the shipped SAEs are portable folders too
        f_shipped = ms.load(shipped.path("toy-mixed", shipped.SITES[0])).encode(x2)
        assert torch.allclose(f_shipped, load_tensors(tmp_path / "g.safetensors")["f"], atol=1e-5, rtol=1e-5)


def test_folders_needing_mechwork_say_which_import(tmp_path):
    """A folder SAELens cannot load alone fails with a KeyError naming the import; after it, it loads."""
    sae, x = _trained("topk", "scale")
    sae.save(tmp_path / "s", portable=False)
    res = _fresh_python(f"import sae_lens\nsae_lens.SAE.load_from_disk({str(tmp_path / 's')!r})\n")
    assert res.returncode != 0 and "KeyError" in res.stderr and "import mechwork.sae.saelens" in res.stderr
    import sae_lens

    import mechwork.sae.saelens  # noqa: F401  (registers)

    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)


def test_legacy_mechwork_topk_folders_still_load(sae_lens, tmp_path):
    """Folders of mechwork <= 0.1 (``mechwork_topk``, unfolded ``norm_scale``, union config) keep loading."""
    sae, x = _trained("topk", "scale", alpha=1.6)
    cfg = {**sae.cfg.to_dict(), "l1_coefficient": 1.0, "l1_warmup": 0.05}
    raw = {
        "architecture": "mechwork_topk",
        "d_in": 24,
        "d_sae": 80,
        "k": 5,
        "alpha": 1.6,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.0.hook_resid_post"},
        "mechwork": {"config": cfg, "meta": {"site": "blocks.0.hook_resid_post"}, "portable": False},
    }
    scale = 0.37
    w = {"W_enc": sae.W_enc / scale, "b_enc": sae.b_enc, "W_dec": sae.W_dec * scale, "b_dec": sae.b_dec * scale}
    (tmp_path / "s").mkdir()
    save_tensors(tmp_path / "s" / "sae_weights.safetensors", {**w, "norm_scale": torch.tensor(scale)})
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(raw))
    back = ms.load(tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    with torch.no_grad():
        assert torch.allclose(back.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
