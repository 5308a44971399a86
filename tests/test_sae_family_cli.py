"""`mechwork sae train | eval | show` for MFR runs and operator SAEs, `--from-tensor`, and their bad input."""

from __future__ import annotations

import json

import torch

from mechwork.cli import main
from mechwork.core.io import save_tensors
from mechwork.sae.functional import FunctionDictionary

QUIET = ["--no-progress"]


def test_mfr_run_from_the_cli(tmp_path, capsys):
    out = tmp_path / "mfr"
    argv = ["sae", "train", "--model", "toy-induction-2l", "--site", "resid_post.1", "--tokens", "3072"]
    argv += ["--batch-size", "512", "--arch", "mfr", "--n-saes", "2", "--mfr-weight", "0.5", "--k", "4"]
    assert main([*argv, "--width", "64", "--lr", "3e-3", "--out", str(out), *QUIET]) == 0
    assert "trained 2 SAE(s)" in capsys.readouterr().out
    saved = json.loads((out / "cfg.json").read_text())
    assert saved["mfr"]["weight"] == 0.5 and [s["architecture"] for s in saved["saes"]] == ["mfr", "mfr"]
    names = sorted(p.name for p in (out / "saes").iterdir())
    card = json.loads((out / "saes" / names[0] / "card.json").read_text())
    assert list(card["mfr"]["partners"]) == [names[1]] and card["saelens"]["loads_without_mechwork"]
    assert main(["sae", "eval", str(out / "saes" / names[0]), "--tokens", "500", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[str(out / "saes" / names[0])]["l0"] > 0


def test_operator_sae_from_a_tensor_file(tmp_path, capsys):
    fd = FunctionDictionary()
    save_tensors(tmp_path / "f.safetensors", {"x": fd.sample(400, 32, seed=0)})
    save_tensors(tmp_path / "g.safetensors", {"x": fd.sample(100, 64, seed=1)})
    out = tmp_path / "fno"
    argv = ["sae", "train", "--from-tensor", str(tmp_path / "f.safetensors"), "--arch", "fno", "--modes", "8"]
    assert main([*argv, "--width", "4", "--batch-size", "100", "--lr", "3e-3", "--out", str(out), *QUIET]) == 0
    folder = next((out / "saes").iterdir())
    capsys.readouterr()
    assert main(["sae", "eval", str(folder), "--from-tensor", str(tmp_path / "g.safetensors"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[str(folder)]
    assert res["architecture"] == "fno" and res["n"] == 100 and 0 < res["nmse"] < 2  # at an unseen resolution
    html = tmp_path / "c.html"
    assert main(["sae", "show", str(folder), "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert "fno SAE: 4 concepts" in text and html.is_file()


def test_family_cli_bad_input(tmp_path, capsys):
    save_tensors(tmp_path / "two.safetensors", {"a": torch.randn(10, 4), "b": torch.randn(10, 4)})
    base = ["sae", "train", "--out", str(tmp_path / "o"), *QUIET]
    assert main([*base, "--from-tensor", str(tmp_path / "two.safetensors")]) != 0
    assert "holds ['a', 'b']; pick one with" in capsys.readouterr().err
    assert main([*base, "--from-tensor", str(tmp_path / "two.safetensors") + ":c"]) != 0
    assert "has no tensor 'c'" in capsys.readouterr().err
    assert main([*base, "--arch", "fno", "--k", "3", "--model", "toy-mixed", "--site", "resid_post.1"]) != 0
    assert "--k do(es) not apply to --arch fno" in capsys.readouterr().err
    assert main([*base, "--arch", "mfr", "--k", "4,8", "--model", "toy-mixed", "--site", "resid_post.1"]) != 0
    assert "copies of one SAE" in capsys.readouterr().err
    assert main([*base, "--arch", "mfr", "--n-saes", "1", "--model", "toy-mixed", "--site", "resid_post.1"]) != 0
    assert "at least 2 SAEs" in capsys.readouterr().err
