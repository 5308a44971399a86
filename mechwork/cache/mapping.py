"""Memory-mapping the shards of one stream back to back as a single tensor.

``map_parts`` reserves one contiguous range of address space and maps each shard's data into it with
``MAP_FIXED``, so ``store[site]`` is one ordinary tensor over every row however many shard files hold them.
Mappings are private (copy-on-write): writing into the tensor never reaches the files. The mapping is
released when the last tensor viewing it is freed. Where POSIX ``mmap`` cannot be called (Windows) or the
store's alignment is not a multiple of this machine's page size, the shards are read into memory instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..core.errors import CheckpointError
from ..core.files import regular_file

_MAP_FIXED = 0x10  # the same value on Linux and macOS


def _libc() -> ctypes.CDLL | None:
    if sys.platform.startswith("win"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        ]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):  # pragma: no cover - exotic platforms
        return None
    return libc


_LIBC = _libc()
_FAILED = ctypes.c_void_p(-1).value


def _round_up(n: int, page: int) -> int:
    return -(-n // page) * page


def map_parts(parts: Sequence[tuple[Path, int, int]], *, align: int) -> Tensor:
    """One uint8 tensor over the concatenated byte ranges ``(path, offset, nbytes)`` of several files.

    Every range but the last must be a multiple of the page size long and every offset page-aligned.
    """
    total = sum(n for _, _, n in parts)
    if total == 0:
        return torch.empty(0, dtype=torch.uint8)
    page = mmap.PAGESIZE
    if _LIBC is None or align % page:
        return _read_parts(
            parts,
            reason="no POSIX mmap" if _LIBC is None else f"alignment {align} is not a multiple of the page size {page}",
        )
    span = _round_up(total, page)
    base = _LIBC.mmap(None, span, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base in (None, _FAILED):
        return _read_parts(parts, reason=f"address-space reservation failed ({os.strerror(ctypes.get_errno())})")
    try:
        at = 0
        for i, (path, offset, nbytes) in enumerate(parts):
            if i < len(parts) - 1 and nbytes % page:
                raise CheckpointError(f"shard {path}: {nbytes} data bytes is not a multiple of the page size {page}")
            _check_part(path, offset, nbytes)
            fd = os.open(path, os.O_RDONLY)
            try:
                got = _LIBC.mmap(
                    base + at,
                    _round_up(nbytes, page),
                    mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_PRIVATE | _MAP_FIXED,
                    fd,
                    offset,
                )
            finally:
                os.close(fd)
            if got != base + at:
                raise CheckpointError(f"cannot memory-map shard {path}: {os.strerror(ctypes.get_errno())}")
            at += nbytes
    except BaseException:
        _LIBC.munmap(base, span)
        raise
    buf = (ctypes.c_char * total).from_address(base)
    weakref.finalize(buf, _LIBC.munmap, base, span)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.frombuffer(buf, dtype=torch.uint8)


def _check_part(path: Path, offset: int, nbytes: int) -> None:
    """A regular file (a FIFO would block ``open``) holding at least ``offset + nbytes`` bytes (a shorter file
    would give SIGBUS on the first touch of the missing pages)."""
    size = regular_file(path, what="shard").st_size
    if size < offset + nbytes:
        raise CheckpointError(
            f"shard {path} has {size} bytes, expected {offset + nbytes}: truncated since it was opened"
        )


def _read_parts(parts: Sequence[tuple[Path, int, int]], *, reason: str) -> Tensor:
    warnings.warn(f"reading activation shards into memory instead of mapping them ({reason})", stacklevel=3)
    out = torch.empty(sum(n for _, _, n in parts), dtype=torch.uint8)
    at = 0
    for path, offset, nbytes in parts:
        _check_part(path, offset, nbytes)
        with open(path, "rb") as f:
            f.seek(offset)
            f.readinto(memoryview(out[at : at + nbytes].numpy()))
        at += nbytes
    return out


def map_stream(
    parts: Sequence[tuple[Path, int, int]], dtype: torch.dtype, shape: tuple[int, ...], rows: int, *, align: int
) -> Tensor:
    """The rows of one stream as a ``[rows, *shape]`` tensor of ``dtype`` mapped from its shards."""
    raw = map_parts(parts, align=align)
    if rows == 0:
        return torch.empty((0, *shape), dtype=dtype)
    return raw.view(dtype).view(rows, *shape)
