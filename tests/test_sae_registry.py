"""The architecture seam: one registry name -> (module, config), per-architecture configs, bad input."""

from __future__ import annotations

import pytest
import torch

import mechwork.sae as ms
from mechwork.core.errors import CheckpointError, ConfigError
from mechwork.sae import registry


def test_registry_maps_names_to_module_and_config_classes():
    assert registry.get("topk").module is ms.TopKSAE and registry.get("topk").config is ms.TopKConfig
    assert registry.get("relu").module is ms.ReLUSAE and registry.get("relu").config is ms.ReLUConfig
    cfg = ms.SAEConfig(architecture="relu", d_in=8, d_sae=16, l1_coefficient=0.5)
    assert type(cfg) is ms.ReLUConfig and not hasattr(cfg, "k")
    assert type(ms.SAE(cfg)) is ms.ReLUSAE and type(ms.SAE(cfg.replace(architecture="topk", k=3))) is ms.TopKSAE
    assert ms.SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown SAE architecture 'topkk' \(did you mean 'topk'"):
        ms.SAEConfig(architecture="topkk")
    with pytest.raises(ConfigError, match=r"'kk' \(did you mean 'k'\?\)"):
        ms.SAEConfig(kk=3)
    with pytest.raises(ConfigError, match="TopKConfig is the config of architecture 'topk'"):
        ms.TopKConfig(architecture="relu")


def test_loading_a_folder_as_another_architecture_is_refused(tmp_path):
    sae = ms.SAE(ms.SAEConfig(architecture="relu", d_in=8, d_sae=16))
    sae.save(tmp_path / "r")
    assert type(ms.load(tmp_path / "r", architecture="relu")) is ms.ReLUSAE
    with pytest.raises(CheckpointError, match="holds a 'relu' SAE, not 'topk'"):
        ms.load(tmp_path / "r", architecture="topk")


def test_resume_with_a_changed_architecture_names_the_fields(tmp_path):
    x = torch.randn(2048, 8)
    cfg = ms.TrainConfig(
        saes=(ms.SAEConfig(d_sae=16, k=2, name="s"),), batch_size=256, out=str(tmp_path), checkpoint_every=2
    )
    ms.train(cfg, x, progress=False, stop_at_step=3)
    relu = cfg.replace(saes=(ms.SAEConfig(architecture="relu", d_sae=16, name="s"),))
    with pytest.raises(ConfigError, match=r"saes\[0\]\.architecture: checkpoint 'topk' vs now 'relu'.*saes\[0\]\.k"):
        ms.train(relu, x, progress=False, resume=True)


def test_cli_refuses_options_of_another_architecture(tmp_path, capsys):
    from mechwork.cli import main

    assert main(["sae", "train", "--arch", "relu", "--alpha", "2", "--model", "toy-mixed", "--out", str(tmp_path)]) != 0
    assert "--alpha do(es) not apply to --arch relu" in capsys.readouterr().err
