"""Guards every reader goes through before it trusts a file: regular files only, bounded sizes, validated
safetensors headers, and SHA-256 digests recorded at write time.

A loader that opens a path first calls :func:`regular_file` (a FIFO, a directory, a device such as a
symlink to ``/dev/zero`` would block or never end), then parses a safetensors header with
:func:`safetensors_header`, which checks every ``data_offsets`` entry against its dtype and shape, against the
others (no overlap, no hole) and against the file's size, before anything is mapped or allocated. Digests:
:func:`write_digest` records ``<file>.sha256`` beside a tensor file (``sha256sum -c`` reads it), and
:func:`check_digest` compares a file with what was recorded; a mismatch is a :class:`CheckpointError` naming
the file. Every failure names the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from .errors import CheckpointError

PathLike = str | os.PathLike

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
DIGEST_SUFFIX = ".sha256"
VERIFY_LIMIT = 2 << 30  # files up to this size are checked against their recorded digest by default

# safetensors dtype codes -> bytes per element
ST_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(path: PathLike, *, what: str = "file", max_bytes: int | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` after checking it is a regular file (symlinks followed) of at most ``max_bytes``.

    Raises
    ------
    CheckpointError
        Missing file, or a directory / FIFO / device / socket in its place, or a file over ``max_bytes``; the
        message names the file.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} is missing (not found)") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
    if max_bytes is not None and st.st_size > max_bytes:
        raise CheckpointError(f"{what} {path} has {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
    return st


def read_bytes(path: PathLike, *, what: str = "file", max_bytes: int = 64 << 20) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (CheckpointError naming the file otherwise)."""
    regular_file(path, what=what, max_bytes=max_bytes)
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from e


# ------------------------------------------------------------------------------------------------ digests
def sha256_file(path: PathLike, *, offset: int = 0, chunk: int = 4 << 20) -> str:
    """Hex SHA-256 of a file's bytes from ``offset`` on (read in ``chunk``-byte blocks)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def digest_path(path: PathLike) -> Path:
    """Where the digest of ``path`` is recorded: ``<name>.sha256`` beside it."""
    p = Path(path)
    return p.with_name(p.name + DIGEST_SUFFIX)


def write_digest(path: PathLike) -> str:
    """Record the SHA-256 of ``path`` in ``<path>.sha256`` (``sha256sum`` format), atomically; return it."""
    from .io import atomic_write_text

    digest = sha256_file(path)
    atomic_write_text(digest_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def recorded_digest(path: PathLike) -> str | None:
    """The digest recorded beside ``path`` (``None`` for artefacts written before digests were recorded)."""
    side = digest_path(path)
    if not side.exists() and not side.is_symlink():
        return None
    text = read_bytes(side, what="digest file", max_bytes=4096).decode("ascii", errors="replace")
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(f"digest file {side} does not hold a SHA-256 digest: corrupt or foreign")
    return digest


def check_digest(
    path: PathLike, expected: str, *, offset: int = 0, what: str = "file", recorded_in: PathLike | None = None
) -> None:
    """Compare the SHA-256 of ``path`` (from ``offset``) with ``expected``; CheckpointError naming it otherwise
    (and ``recorded_in``, the file that holds the digest)."""
    got = sha256_file(path, offset=offset)
    if got != expected:
        where = f" in {recorded_in}" if recorded_in is not None else ""
        raise CheckpointError(
            f"{what} {path} does not match the SHA-256 recorded{where} when it was written ({got}, recorded "
            f"{expected}): one of them is corrupt; restore the artefact or regenerate it"
        )


DIGEST_KEY = "sha256"


def json_digest(obj: dict[str, Any]) -> str:
    """SHA-256 of a JSON object's canonical form (sorted keys, no spaces), leaving out its ``"sha256"`` key."""
    body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_json(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``"sha256"``: the digest of the rest, so that a changed number is detected at load."""
    return {**obj, DIGEST_KEY: json_digest(obj)}


def check_sealed(obj: dict[str, Any], path: PathLike, *, what: str = "file") -> None:
    """Compare a sealed JSON object with its recorded digest (files written before sealing have none)."""
    if DIGEST_KEY not in obj:
        return
    if obj[DIGEST_KEY] != json_digest(obj):
        raise CheckpointError(
            f"{what} {path} has changed since it was written (its content no longer matches the recorded SHA-256): "
            "the file is corrupt or was edited"
        )


# ------------------------------------------------------------------------------------------------ safetensors
def safetensors_header(path: PathLike, *, what: str = "weights file") -> tuple[int, dict[str, Any]]:
    """``(data start, header)`` of a safetensors file, validated before anything is mapped or allocated.

    Checks: a regular file; a header length inside the file and under 100 MB; a JSON object whose entries
    (besides ``__metadata__``, a dict of strings) each have a known dtype, a shape of non-negative integers and
    ``data_offsets`` ``[begin, end]`` with ``end - begin`` = elements x element size; the byte ranges, sorted,
    tile the data region exactly (no overlap, no hole) and end at the end of the file.
    """
    st = regular_file(path, what=what)
    size = st.st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{what} {path} is truncated ({size} bytes): not a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER):
                raise CheckpointError(
                    f"{what} {path} declares a {n}-byte header in a {size}-byte file: truncated, corrupt or foreign"
                )
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from e
    try:
        hdr = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} has an unreadable header ({e}): corrupt or foreign file") from e
    if not isinstance(hdr, dict):
        raise CheckpointError(f"{what} {path} has a header that is not a JSON object: foreign file")
    meta = hdr.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{what} {path}: header __metadata__ must map strings to strings")
    start = 8 + n
    spans = []
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        spans.append((*_entry_span(path, what, name, info), name))
    spans.sort()
    at = 0
    for begin, end, name in spans:
        if begin != at:
            problem = "overlaps the previous tensor" if begin < at else f"leaves a hole of {begin - at} bytes"
            raise CheckpointError(f"{what} {path}: tensor {name!r} (bytes {begin}..{end}) {problem}")
        at = end
    if start + at != size:
        raise CheckpointError(
            f"{what} {path} has {size} bytes but its header describes {start + at}: truncated, extended or corrupt"
        )
    return start, hdr


def _entry_span(path: PathLike, what: str, name: str, info: Any) -> tuple[int, int]:
    where = f"{what} {path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has a header entry that is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in ST_SIZES:
        raise CheckpointError(f"{where} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise CheckpointError(f"{where} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * ST_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, but {dtype} {shape} needs {nbytes}"
        )
    return offsets[0], offsets[1]


__all__ = [
    "regular_file",
    "read_bytes",
    "sha256_file",
    "digest_path",
    "write_digest",
    "recorded_digest",
    "check_digest",
    "safetensors_header",
    "json_digest",
    "seal_json",
    "check_sealed",
    "VERIFY_LIMIT",
]
