"""Where collected rows go: shard files on disk (through a writer thread) or tensors in memory.

The collection loop hands each batch's rows to a *sink* with ``write(shard, payload)`` and closes each shard
with ``end_shard(shard, rows, stats)``. :class:`DiskSink` appends the bytes of each stream to a temporary
shard file, and at the end of a shard checks the values are finite, writes the shard's statistics, fsyncs
and renames every file, then commits the manifest. :class:`Pipeline` runs a sink on a writer thread so the
forward pass of the next batch overlaps the disk I/O of the previous one; on a GPU it first waits for the
batch's device-to-host copies (a CUDA event) and then recycles its pinned buffers.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import CheckpointError, MechworkError, NonFiniteError
from ..core.files import sha256_file
from ..core.io import fsync_dir, save_tensors
from . import format as F
from .background import Worker
from .stats import Moments

Payload = dict[str, Tensor]  # stream name (site or TOKENS) -> rows [n, *shape], CPU, contiguous


@dataclasses.dataclass(frozen=True)
class Stream:
    """One stream of rows stored in a folder of shards: a site, or the token stream."""

    name: str
    dir: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * F.element_size(self.dtype)


SYNC_EVERY = 32 << 20  # bytes appended to a shard file between two fdatasync calls (0: only when it is closed)
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _ShardFile:
    """A shard being written: raw appends to a temporary file, header fixed up at the end, fsync, rename."""

    def __init__(self, final: Path, stream: Stream, align: int) -> None:
        self.final, self.stream, self.align = final, stream, align
        self.tmp = F.tmp_name(final)
        self.f = open(self.tmp, "wb", buffering=0)
        self.f.write(F.header(stream.name, stream.dtype, (0, *stream.shape), align=align))
        self.rows = 0
        self.unsynced = 0
        self.hash = hashlib.sha256()  # of the data bytes (the header is checked against the manifest instead)

    def append(self, t: Tensor) -> int:
        self.rows += int(t.shape[0])
        data = F.tensor_bytes(t)
        self.hash.update(data)
        n = F.write_all(self.f, data)
        self.unsynced += n
        if SYNC_EVERY and self.unsynced >= SYNC_EVERY:  # flush as we go (on the writer thread, overlapping the
            _datasync(self.f.fileno())  # forward pass) so that closing the shard has little left to wait for
            self.unsynced = 0
        return n

    def finish(self) -> None:
        self.f.seek(0)
        self.f.write(F.header(self.stream.name, self.stream.dtype, (self.rows, *self.stream.shape), align=self.align))
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _disk_error(e: OSError, root: Path, committed: int) -> CheckpointError:
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file size limit was reached",
    }.get(e.errno or 0, f"a write failed ({e.strerror or e})")
    where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
    return CheckpointError(
        f"{what}{where}. The store {root} keeps its {committed} committed tokens intact; free space and run "
        "collect(..., resume=True) to continue"
    )


class DiskSink:
    """Writes shards into ``root`` and commits ``manifest`` after each complete shard."""

    def __init__(self, root: Path, manifest: F.Manifest, streams: list[Stream]) -> None:
        self.root, self.manifest, self.streams = root, manifest, {s.name: s for s in streams}
        self.files: dict[str, _ShardFile] = {}
        self.shard: int | None = None
        self.bytes_written = 0
        for s in streams:
            (root / s.dir).mkdir(parents=True, exist_ok=True)
        (root / "stats").mkdir(exist_ok=True)

    def write(self, shard: int, payload: Payload, *, event: Any = None, release: Any = None) -> None:
        try:
            if self.shard != shard:
                self.files = {
                    n: _ShardFile(self.root / s.dir / F.shard_name(shard), s, self.manifest.align)
                    for n, s in self.streams.items()
                }
                self.shard = shard
            for name, t in payload.items():
                self.bytes_written += self.files[name].append(t)
        except OSError as e:
            raise _disk_error(e, self.root, self.manifest.n_tokens) from e

    def end_shard(self, shard: int, rows: int, stats: dict[str, Moments]) -> None:
        for name, m in stats.items():
            s = self.streams[name]
            if not m.finite_within(torch.finfo(s.dtype).max):
                self._raise_nonfinite(s, rows)
        try:
            stats_file = self.root / "stats" / F.shard_name(shard)
            save_tensors(stats_file, {k: v for n, m in stats.items() for k, v in m.tensors(n).items()}, digest=False)
            digests = {f"stats/{F.shard_name(shard)}": sha256_file(stats_file)}
            for f in self.files.values():
                if f.rows != rows:
                    raise MechworkError(
                        f"internal error: shard {shard} of {f.stream.name} has {f.rows} rows, expected {rows}"
                    )
                f.finish()
                digests[f"{f.stream.dir}/{F.shard_name(shard)}"] = f.hash.hexdigest()
            for s in self.streams.values():
                fsync_dir(self.root / s.dir)
            self.files = {}
            self.shard = None
            m = self.manifest
            self.manifest = m.replace(
                shards=(*m.shards, rows), n_tokens=m.n_tokens + rows, digests={**m.digests, **digests}
            )
            self.manifest.to_json(self.root / F.MANIFEST)
        except OSError as e:
            raise _disk_error(e, self.root, self.manifest.n_tokens) from e

    def _raise_nonfinite(self, s: Stream, rows: int) -> None:
        """Find the first non-finite stored value of the open shard of ``s`` and raise NonFiniteError."""
        f = self.files[s.name]
        f.f.flush()
        raw = torch.from_file(
            str(f.tmp), shared=False, size=self.manifest.align + rows * s.row_bytes, dtype=torch.uint8
        )
        data = raw[self.manifest.align :].view(s.dtype).view(rows, -1)
        bad = (~torch.isfinite(data)).any(dim=1).nonzero()
        row = self.manifest.n_tokens + (int(bad[0]) if bad.numel() else 0)
        what = "NaN or inf" if bad.numel() else "an out-of-range value"
        hint = (
            ""
            if s.dtype in (torch.float32, torch.float64)
            else f" (values beyond the {s.dtype} range overflow: store float32 or bfloat16)"
        )
        raise NonFiniteError(
            f"site {s.name}: {what} activation at token row {row} (window {row // self.manifest.context}, position "
            f"{row % self.manifest.context}){hint}; nothing from this shard was committed"
        )

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()
        self.files = {}


class MemorySink:
    """Keeps rows in memory: preallocated tensors when the row count is known, else chunks joined at the end."""

    def __init__(self, streams: list[Stream], n_rows: int | None, device: torch.device) -> None:
        self.streams = {s.name: s for s in streams}
        # activations live on ``device``; token ids always stay on the CPU
        self.devices = {s.name: device if s.name != F.TOKENS else torch.device("cpu") for s in streams}
        self.prealloc = n_rows is not None
        self.bufs: dict[str, Tensor] = {}
        if n_rows is not None:
            self.bufs = {
                s.name: torch.empty((n_rows, *s.shape), dtype=s.dtype, device=self.devices[s.name]) for s in streams
            }
        self.chunks: dict[str, list[Tensor]] = {s.name: [] for s in streams}
        self.rows = 0
        self.shard_rows: list[int] = []
        self.shard_stats: list[dict[str, Moments]] = []
        self.bytes_written = 0

    def write(self, shard: int, payload: Payload, *, event: Any = None, release: Any = None) -> None:
        n = 0
        for name, t in payload.items():
            n = int(t.shape[0])
            if self.prealloc:
                self.bufs[name][self.rows : self.rows + n].copy_(t)
            else:
                self.chunks[name].append(t.to(self.devices[name], self.streams[name].dtype, copy=True))
            self.bytes_written += n * self.streams[name].row_bytes
        self.rows += n

    def end_shard(self, shard: int, rows: int, stats: dict[str, Moments]) -> None:
        for name, m in stats.items():
            s = self.streams[name]
            if not m.finite_within(torch.finfo(s.dtype).max):
                data = self.tensors()[name][self.rows - rows : self.rows].reshape(rows, -1)
                bad = (~torch.isfinite(data)).any(dim=1).nonzero()
                row = self.rows - rows + (int(bad[0]) if bad.numel() else 0)
                raise NonFiniteError(
                    f"site {name}: NaN, inf or out-of-range activation at token row {row} (storage dtype {s.dtype})"
                )
        self.shard_rows.append(rows)
        self.shard_stats.append({k: m.to("cpu") for k, m in stats.items()})

    def tensors(self) -> dict[str, Tensor]:
        """The rows written so far, one tensor per stream."""
        if self.prealloc:
            return {n: b[: self.rows] for n, b in self.bufs.items()}
        return {
            n: torch.cat(c) if c else torch.empty((0, *self.streams[n].shape), dtype=self.streams[n].dtype)
            for n, c in self.chunks.items()
        }

    def abort(self) -> None:
        self.bufs = None
        self.chunks = {n: [] for n in self.chunks}


class Pipeline:
    """Runs a sink's ``write`` / ``end_shard`` on a background :class:`~mechwork.cache.background.Worker`,
    ``depth`` batches behind the producer.

    Errors raised on the thread are re-raised in the producer at its next call (or at :meth:`close`).
    """

    def __init__(self, sink: Any, depth: int = 3) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.worker = Worker(depth, name="mechwork-cache-writer")

    def _run(self, fn: Callable[..., Any], args: tuple, event: Any, release: Callable[[], None] | None) -> None:
        try:
            if self.error is None:  # after a failure: drain, but still hand pinned buffers back
                if event is not None:
                    event.synchronize()
                fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the producer
            self.error = e
        finally:
            if release is not None:
                release()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _put(self, fn: Callable[..., Any], args: tuple, event: Any = None, release: Any = None) -> None:
        self._check()
        self.worker.submit(self._run, fn, args, event, release, on_cancel=release)

    def write(
        self, shard: int, payload: Payload, *, event: Any = None, release: Callable[[], None] | None = None
    ) -> None:
        self._put(self.sink.write, (shard, payload), event, release)

    def end_shard(self, shard: int, rows: int, stats: dict[str, Moments]) -> None:
        self._put(self.sink.end_shard, (shard, rows, stats))

    @property
    def bytes_written(self) -> int:
        return self.sink.bytes_written

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a writer error."""
        self.worker.drain()
        self.worker.close(timeout=None)
        self._check()

    def abort(self) -> None:
        """Stop after the current item, drop the rest and remove partial files."""
        self.error = self.error or MechworkError("aborted")
        self.worker.close(timeout=None)
        self.sink.abort()


class PinnedPool:
    """Reusable pinned host buffers per stream for non-blocking device-to-host copies (GPU path).

    ``depth`` buffers per stream circulate between the producer (``take``, then a non-blocking copy) and the
    writer thread (``give`` once the batch is on disk), which bounds the host memory in flight. ``pin=False``
    gives ordinary buffers (the tests run this path on a CPU).
    """

    def __init__(self, streams: list[Stream], rows: int, depth: int, *, pin: bool = True) -> None:
        self.free: dict[str, queue.Queue] = {}
        for s in streams:
            q: queue.Queue = queue.Queue()
            for _ in range(depth):
                q.put(torch.empty((rows, *s.shape), dtype=s.dtype, pin_memory=pin))
            self.free[s.name] = q

    def take(self, name: str) -> Tensor:
        return self.free[name].get()

    def give(self, name: str, buf: Tensor) -> None:
        self.free[name].put(buf)


def clear_uncommitted(root: Path, streams: list[Stream], committed: int) -> None:
    """Remove temporary files and shards numbered ``>= committed`` left by an interrupted run."""
    for d in [s.dir for s in streams] + ["stats"]:
        folder = root / d
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
            elif p.name.startswith("shard-") and p.name.endswith(".safetensors"):
                try:
                    idx = int(p.name[6:11])
                except ValueError:
                    continue
                if idx >= committed:
                    p.unlink(missing_ok=True)
