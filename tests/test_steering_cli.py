"""`mechwork steer fit | generate | sweep` end to end (difference of means: seconds)."""

from __future__ import annotations

import json

from mechwork.cli import main


def test_steer_cli_fit_generate_sweep(tmp_path, capsys):
    out = tmp_path / "dm"
    assert (
        main(
            [
                "steer",
                "fit",
                "toy-mixed",
                "--method",
                "diffmeans",
                "--sites",
                "resid_post",
                "--n",
                "16",
                "--eval-n",
                "24",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["steered"]["rate"] > report["unsteered"]["rate"] + 0.2, report
    card = json.loads((out / "card.json").read_text())
    assert "evaluation" in card and (out / "steerer.safetensors").is_file()
    assert (
        main(
            [
                "steer",
                "generate",
                str(out),
                "--prompt",
                "the day began .",
                "--prompt",
                "the park was",
                "--temperature",
                "0",
                "--compare",
                "--json",
                "--positions",
                "generated",
            ]
        )
        == 0
    )
    gens = json.loads(capsys.readouterr().out)
    assert len(gens) == 2 and all("unsteered" in g for g in gens)
    sweep = tmp_path / "sweep"
    assert main(["steer", "sweep", str(out), "--strengths", "1", "--layers", "--n", "8", "--out", str(sweep)]) == 0
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    assert len(rows) == 1 + 4 and (sweep / "sweep.html").is_file() and (sweep / "support.html").is_file()
    html = (sweep / "sweep.html").read_text()
    assert "<script" in html and "plotly" in html.lower()


def test_steer_cli_bad_input(tmp_path, capsys):
    assert main(["steer", "fit", "toy-mixed", "--method", "diffmeans", "--n", "3", "--out", str(tmp_path / "x")]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert (
        main(["steer", "fit", "toy-mixed", "--method", "diffmeans", "--steps", "5", "--out", str(tmp_path / "y")]) == 2
    )
    assert "no option steps" in capsys.readouterr().err
    assert main(["steer", "generate", str(tmp_path / "missing"), "--prompt", "a"]) == 2
    assert "cfg.json" in capsys.readouterr().err
