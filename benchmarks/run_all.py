"""Run every benchmark in this folder in turn (each prints its table and writes results/<name>.json)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("*_bench.py")):
        print(f"\n===== {script.name} =====", flush=True)
        r = subprocess.run([sys.executable, str(script), *sys.argv[1:]], cwd=HERE.parent)
        if r.returncode:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
