"""`mechwork sae train | eval | show` end to end, and the SAE notebook executed with nbclient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechwork.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_has_examples(capsys):
    for argv in (["sae", "--help"], ["sae", "train", "--help"], ["sae", "eval", "--help"], ["sae", "show", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "example" in capsys.readouterr().out.lower()


def test_train_eval_show_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "sae",
        "train",
        "--model",
        "toy-induction-2l",
        "--site",
        "resid_post.1",
        "--tokens",
        "6144",
        "--batch-size",
        "512",
        "--k",
        "4,8",
        "--width",
        "128",
        "--lr",
        "3e-3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trained 2 SAE(s)" in text and "topk_k8_w128_s0" in text
    saved = json.loads((out / "cfg.json").read_text())
    assert [s["k"] for s in saved["saes"]] == [4, 8] and saved["site"] == "resid_post.1"
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    sae_dir = out / "saes" / "topk_k8_w128_s0"
    assert main(["sae", "eval", str(sae_dir), "--tokens", "600", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[str(sae_dir)]
    assert res["site"] == "blocks.1.hook_resid_post" and res["l0"] == pytest.approx(8.0)
    html = tmp_path / "d.html"
    assert main(["sae", "show", str(sae_dir), "0", "1", "--tokens", "800", "--top", "2", "--html", str(html)]) == 0
    shown = capsys.readouterr().out
    assert "latent 0:" in shown and "latent 1:" in shown and html.is_file()
    # resuming a finished run's config in a new folder with --stop-at, then --resume
    argv2 = [
        "sae",
        "train",
        "--config",
        str(out / "cfg.json"),
        "--out",
        str(tmp_path / "r2"),
        "--no-progress",
        "--checkpoint-every",
        "4",
    ]
    assert main(argv2 + ["--stop-at", "5"]) == 0
    assert "stopped at step 5" in capsys.readouterr().out
    assert main(argv2 + ["--resume"]) == 0


def test_cli_bad_input_is_an_error_message(tmp_path, capsys):
    argv = [
        "sae",
        "train",
        "--model",
        "toy-induction-2l",
        "--site",
        "resid_post.1",
        "--tokens",
        "2048",
        "--k",
        "500",
        "--width",
        "64",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(argv) == 2
    assert "k must be between 1 and d_sae=64" in capsys.readouterr().err
    assert main(["sae", "eval", str(tmp_path / "missing")]) == 2
    assert "no SAE folder" in capsys.readouterr().err
    assert main(["sae", "train", "--k", "4", "--width", "64", "--out", str(tmp_path / "y")]) == 2
    assert "no training data" in capsys.readouterr().err


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "02_sae.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
