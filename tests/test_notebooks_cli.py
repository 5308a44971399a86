"""The CLI's foundation commands and the getting-started notebook, executed end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mechwork.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_on_every_level(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "demo", "zoo"):
        assert cmd in out
    for argv in (["zoo", "--help"], ["zoo", "train", "--help"], ["info", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "example" in capsys.readouterr().out.lower() or argv[:2] == ["zoo", "train"]


def test_info_json(capsys):
    assert main(["info", "toy-induction-2l", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 2 and any(s["alias"] == "z.1" for s in info["sites"])


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "toy-mixed (default)" in out and "toy-induction-2l" in out and "ioi" in out


def test_errors_are_reported_not_raised(capsys):
    assert main(["info", "toy-mixd"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_demo_writes_figure(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "32"]) == 0
    out = capsys.readouterr().out
    assert "IOI on 32 held-out name pairs" in out and "logit lens" in out
    html = (tmp_path / "ioi_logit_lens.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # plotly.js inlined: works offline


def test_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "mechwork", "zoo", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert {m["name"] for m in json.loads(r.stdout)} >= {"toy-mixed", "toy-induction-2l"}


def test_getting_started_notebook_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "01_getting_started.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
