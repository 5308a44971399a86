"""The erasure walkthrough notebook executes end to end without errors and finds an eraser that works."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_erasure_notebook_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "04_erasure.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "eraser.safetensors" in text
    # "<method> at <site> | gender CLEAN -> ERASED | ioi CLEAN -> ERASED": the pronoun accuracy (chance 0.5,
    # which pronoun's logit wins) must fall to within 0.1 of chance while IOI stays close to the clean model
    m = re.search(r"\| gender ([0-9.]+) -> ([0-9.]+) \| ioi ([0-9.]+) -> ([0-9.]+)", text)
    assert m, text[-2000:]
    gender_clean, gender_erased, ioi_clean, ioi_erased = map(float, m.groups())
    assert gender_clean >= 0.95 and abs(gender_erased - 0.5) <= 0.1, m.group(0)
    assert ioi_clean - ioi_erased < 0.05, m.group(0)
