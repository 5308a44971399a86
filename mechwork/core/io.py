"""Atomic file writing and safe tensor loading.

Every artefact mechwork writes goes through these helpers: the bytes land in a temporary file in the
destination folder, are flushed and fsync'ed, then renamed over the final name, so a reader never sees a
half-written file and an interrupted writer leaves the old file (or nothing) behind. Tensors are stored
with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import (
    VERIFY_LIMIT,
    check_digest,
    digest_path,
    read_bytes,
    recorded_digest,
    safetensors_header,
    write_digest,
)

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, base: int) -> None:
    """Give a mkstemp/mkdtemp result (0600/0700) the permissions a plain open()/mkdir() would have."""
    try:
        os.chmod(path, base & ~_umask())
    except OSError:
        pass


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _default_mode(tmp_path, 0o666)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.dtype):
        return str(o).removeprefix("torch.")
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def read_json(path: PathLike, *, what: str = "JSON file", max_bytes: int = 64 << 20) -> Any:
    """Read JSON, raising :class:`CheckpointError` naming the file when missing, not a regular file (FIFO,
    directory, device), over ``max_bytes``, or invalid."""
    path = Path(path)
    data = read_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({e}); the file is truncated or foreign") from e


def save_tensors(
    path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *, digest: bool = True
) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous and moved to CPU.

    With ``digest`` the file's SHA-256 is recorded beside it (``<name>.sha256``), and :func:`load_tensors`
    checks it.
    """
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)
    if digest:
        write_digest(path)


def load_tensors(
    path: PathLike,
    *,
    device: str | torch.device = "cpu",
    what: str = "weights file",
    floating: bool | Collection[str] = False,
    finite: bool = True,
    verify: bool | None = None,
    digest: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checked; every problem raises :class:`CheckpointError` naming the file.

    Parameters
    ----------
    path : str or Path
    device : str or torch.device
    what : str
        What the file is, for messages ("SAE weights", "eraser tensors").
    floating : bool or collection of str
        ``True``: every tensor must have a floating dtype (a float tensor relabelled as int32 in the header is
        refused); a collection: every tensor except those names.
    finite : bool
        Refuse NaN or inf in any floating tensor.
    verify : bool, optional
        Compare the file with its recorded SHA-256 (``digest``, else ``<file>.sha256``). ``None`` (default):
        when one is recorded and the file is at most 2 GiB; ``True``: whenever one is recorded.
    digest : str, optional
        The expected SHA-256 (e.g. from a manifest), instead of the ``.sha256`` file beside it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    safetensors_header(path, what=what)
    expected = digest if digest is not None else (recorded_digest(path) if verify is not False else None)
    if expected is not None and verify is not False:
        if verify or path.stat().st_size <= VERIFY_LIMIT:
            side = None if digest is not None else digest_path(path)
            check_digest(path, expected, what=what, recorded_in=side)
    try:
        out = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = path.stat().st_size
        raise CheckpointError(
            f"cannot read {what} {path} ({size} bytes): {e}. The file is truncated, corrupt or not "
            "a safetensors file (mechwork never loads pickled weights)."
        ) from e
    check_tensors(out, path, what=what, floating=floating, finite=finite)
    return out


def check_tensors(
    tensors: dict[str, torch.Tensor],
    path: PathLike,
    *,
    what: str = "weights file",
    floating: bool | Collection[str] = False,
    finite: bool = True,
) -> None:
    """Dtype and finiteness checks of loaded tensors (see :func:`load_tensors`); errors name ``path``."""
    for k, v in tensors.items():
        if floating is not False and not v.is_floating_point() and (floating is True or k not in floating):
            raise CheckpointError(f"{what} {path}: tensor {k!r} has dtype {v.dtype}, expected a floating dtype")
        if finite and v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{what} {path}: tensor {k!r} contains NaN or inf")


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty dict when none)."""
    from safetensors import safe_open

    safetensors_header(path)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@contextlib.contextmanager
def atomic_dir(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place when the block succeeds.

    With ``overwrite`` an existing folder at ``path`` is replaced (moved aside, then removed) only after the
    new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        _default_mode(tmp, 0o777)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
