"""The steering walkthrough notebook executes end to end and LinEAS reaches the target style in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_steering_notebook_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "06_steering.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "steerer.safetensors" in text and "cache == no cache: True" in text
    m = re.search(r"strength 1\.0: rate ([0-9.]+)  KL ([0-9.]+)", text)
    assert m, text[-2000:]
    rate, kl = map(float, m.groups())
    assert rate >= 0.9 and kl < 0.1, m.group(0)
    inv = float(re.search(r"inverse: rate of positive generations ([0-9.]+)", text).group(1))
    assert inv < 0.3
