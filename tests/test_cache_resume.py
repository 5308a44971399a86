"""mechwork.cache: a child process really killed mid-write, then resumed, gives a byte-identical store; a real
kernel write failure (file-size limit) leaves a clean, resumable store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mechwork
from mechwork import CheckpointError
from mechwork.cache import ActivationStore, collect
from mechwork.cache import format as F

ROOT = Path(__file__).resolve().parents[1]
N_WINDOWS = 48
SITES = ["resid_post.1", "z.2", "mlp_post.0"]
KW = dict(batch_size=2, bos=False, shard_tokens=512, progress=False)

# The child collects from a deliberately slow generator so the parent can kill it mid-run.
CHILD = textwrap.dedent(
    """
    import os, resource, signal, sys, time
    import torch
    torch.set_num_threads(1)
    import mechwork
    from mechwork.cache import collect
    out, delay, fsize = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    if fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    model = mechwork.load_model("toy-mixed", device="cpu")
    tokens = torch.randint(3, 200, ({n}, 64), generator=torch.Generator().manual_seed(11))
    def batches():
        for i in range(0, {n}, 2):
            time.sleep(delay)
            yield tokens[i : i + 2]
    try:
        collect(model, batches(), {sites!r}, out=out, **{kw!r})
    except mechwork.MechworkError as e:
        print("ERROR", type(e).__name__, e, flush=True)
        sys.exit(3)
    """
).format(n=N_WINDOWS, sites=SITES, kw=KW)


def _tokens() -> torch.Tensor:
    return torch.randint(3, 200, (N_WINDOWS, 64), generator=torch.Generator().manual_seed(11))


def _batches():
    t = _tokens()
    return (t[i : i + 2] for i in range(0, N_WINDOWS, 2))


def _spawn(out: Path, delay: float, fsize: int = 0) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(delay), str(fsize)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _committed(out: Path) -> int:
    try:
        return F.Manifest.from_json(out / F.MANIFEST).n_tokens
    except Exception:  # not written yet, or being replaced
        return 0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_killed_child_then_resume_gives_identical_store(toy_mixed, tmp_path):
    reference = collect(toy_mixed, _batches(), SITES, out=tmp_path / "ref", **KW)
    out = tmp_path / "killed"
    child = _spawn(out, delay=0.15)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once two shards are committed and a third is being written
            if child.poll() is not None:
                pytest.fail(f"the child finished before it could be killed:\n{child.stdout.read()}")
            if _committed(out) >= 2 * 512 and any(p.name.endswith(".tmp") for p in out.rglob("*")):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the child made no progress")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in out.rglob("*"))  # it really died mid-write

    with pytest.raises(CheckpointError, match="did not finish"):
        ActivationStore.open(out)
    partial = ActivationStore.open(out, partial=True)
    assert partial.n_tokens >= 1024 and partial.n_tokens % 512 == 0
    assert torch.equal(partial["z.2"], reference["z.2"][: partial.n_tokens])

    resumed = collect(toy_mixed, _batches(), SITES, out=out, resume=True, **KW)
    assert resumed.n_tokens == reference.n_tokens == N_WINDOWS * 64
    assert _files(out) == _files(tmp_path / "ref")  # byte for byte: shards, statistics, manifest
    for s in SITES:
        assert torch.equal(resumed[s], reference[s])
    assert resumed.stats("mlp_post.0")["mean_norm"] == reference.stats("mlp_post.0")["mean_norm"]


def test_file_size_limit_fails_cleanly(toy_mixed, tmp_path):
    """A real write failure from the kernel (EFBIG under RLIMIT_FSIZE) in the middle of a shard."""
    out = tmp_path / "limited"
    child = _spawn(out, delay=0.0, fsize=300_000)  # a 512-row mlp_post shard is 1 MiB: its first shard fails
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 3, output
    assert "CheckpointError" in output and "file size limit" in output and "resume=True" in output
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert ActivationStore.open(out, partial=True).n_tokens == 0
    store = collect(toy_mixed, _batches(), SITES, out=out, resume=True, **KW)  # without the limit it completes
    assert store.n_tokens == N_WINDOWS * 64
    assert mechwork.site(toy_mixed, "mlp_post.0").name in store.sites
