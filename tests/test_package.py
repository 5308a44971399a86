"""The top-level package advertises exactly what exists."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import mechwork


def test_dir_lists_only_subpackages_that_exist():
    root = Path(mechwork.__file__).parent
    on_disk = {p.parent.name for p in root.glob("*/__init__.py")}
    listed = set(dir(mechwork))
    assert on_disk <= listed
    assert {"load_model", "sites", "MechworkError", "__version__"} <= listed
    assert not {"importlib", "pkgutil", "Any", "annotations"} & listed  # no import leftovers
    for name in listed - on_disk:  # every other name is a real attribute
        assert hasattr(mechwork, name), name
    for name in on_disk:
        assert importlib.import_module(f"mechwork.{name}") is getattr(mechwork, name)
    missing = next(n for n in ("circuits", "steering", "no_such_capability") if n not in on_disk)
    with pytest.raises(AttributeError, match=missing):
        getattr(mechwork, missing)
