"""Shared helpers for benchmarks: environment description, a printed table, JSON results.

Every benchmark prints a table, compares against a peer measured in the same run (as a ratio) and writes
``benchmarks/results/<name>.json``. Timings are wall-clock medians of repeated runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    try:
        from importlib.metadata import version

        import transformer_lens  # noqa: F401

        env["transformer_lens"] = version("transformer-lens")
        env["sae_lens"] = version("sae-lens")
    except Exception:  # pragma: no cover
        pass
    return env


def timeit(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1, sync: bool = True) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""

    def _sync() -> None:
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Print rows as an aligned text table (also returned as a string)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_results(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``{environment, **payload}`` to ``<out_dir or benchmarks/results>/<name>.json`` (atomic)."""
    from mechwork.core.io import atomic_write_json

    out = Path(out_dir or RESULTS_DIR) / f"{name}.json"
    atomic_write_json(
        out, {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(), **payload}
    )
    print(f"wrote {out}")
    return out


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
