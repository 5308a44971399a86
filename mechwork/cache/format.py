"""On-disk format of an activation store: the manifest and the shard files.

A store is a folder::

    manifest.json                      model spec, sites, shapes, dtype, context, token count, shards, statistics
    stats.safetensors                  per-site running statistics (float64), written when the store completes
    tokens/shard-00000.safetensors     int64 [rows, 3]: token id, document index, position in the document
    <site>/shard-00000.safetensors     [rows, *shape] activations of one site (one folder per site)
    stats/shard-00000.safetensors      the statistics of each shard (what resuming continues from)

Every shard file is a valid safetensors file holding one tensor, whose header is padded so that the data
starts on a page boundary (``align`` bytes, recorded in the manifest). All shards but the last hold
``shard_tokens`` rows, a multiple of the page size in bytes, so the shards of a site can be memory-mapped
back to back as one tensor. A shard is written under a temporary name, fsync'ed and renamed; the manifest,
rewritten atomically after each shard, is the commit point: rows beyond ``n_tokens`` do not exist.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.config import Config
from ..core.errors import CheckpointError, ConfigError
from ..core.files import safetensors_header

FORMAT = "mechwork-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.safetensors"
TOKENS = "tokens"  # the stream of token ids / document index / document position
ALIGN = max(4096, mmap.PAGESIZE)

ST_CODES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
}
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class SiteEntry(Config):
    """One stored site: full hook name, alias, kind, layer, per-token shape and its folder in the store."""

    name: str
    alias: str
    kind: str
    layer: int | None
    shape: tuple[int, ...]
    dir: str

    LIMITS: ClassVar[dict[str, tuple[int | None, int | None]]] = {"layer": (0, 1 << 20)}

    def __post_init__(self) -> None:
        if not self.shape or not all(isinstance(n, int) and 1 <= n <= 1 << 31 for n in self.shape):
            raise ConfigError(f"SiteEntry {self.name!r}: shape must be positive integers, got {list(self.shape)}")
        if math.prod(self.shape) > 1 << 31:
            raise ConfigError(f"SiteEntry {self.name!r}: shape {list(self.shape)} is too large")
        if not self.dir or self.dir.startswith(".") or "/" in self.dir or "\\" in self.dir or self.dir == TOKENS:
            raise ConfigError(f"SiteEntry {self.name!r}: dir {self.dir!r} must be a plain folder name in the store")

    @property
    def d(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Manifest(Config):
    """The manifest of an activation store (``manifest.json``).

    ``n_tokens`` counts the committed rows; ``shards`` the rows of each committed shard; ``complete`` is set
    when the collection finished. ``fingerprint`` identifies the model's weights (to refuse resuming a store
    with another model); ``summary`` holds per-site scalar statistics for humans (the full ones are in
    ``stats.safetensors``).
    """

    model_spec: str
    sites: tuple[SiteEntry, ...]
    dtype: str
    context: int
    bos: bool
    batch_size: int
    shard_tokens: int
    source: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    mechwork_version: str = ""
    fingerprint: str = ""
    align: int = ALIGN
    seed: int = 0
    autocast: str | None = None
    requested_tokens: int | None = None
    packing: str = "concat"
    n_tokens: int = 0
    shards: tuple[int, ...] = ()
    complete: bool = False
    summary: dict[str, dict[str, float | None]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    LIMITS: ClassVar[dict[str, tuple[int | None, int | None]]] = {
        "context": (1, 1 << 24),
        "batch_size": (1, 1 << 24),
        "shard_tokens": (1, 1 << 40),
        "align": (1, 1 << 24),
        "seed": (0, (1 << 64) - 1),
        "requested_tokens": (0, 1 << 50),
        "n_tokens": (0, 1 << 50),
        "format_version": (1, FORMAT_VERSION),
    }

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ConfigError(f"Manifest.format must be {FORMAT!r}, found {self.format!r}")
        if self.align & (self.align - 1):
            raise ConfigError(f"Manifest.align must be a power of two, found {self.align}")
        if self.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise ConfigError(f"Manifest.dtype must be float32, float16, bfloat16 or float64; found {self.dtype!r}")
        if len(self.shards) > 1 << 24 or not all(isinstance(r, int) and 0 < r <= 1 << 40 for r in self.shards):
            raise ConfigError("Manifest.shards must list positive row counts")
        dirs = [s.dir for s in self.sites]
        if not self.sites or len(set(dirs)) != len(dirs) or len({s.name for s in self.sites}) != len(self.sites):
            raise ConfigError("Manifest.sites must be non-empty, with distinct names and folders")

    def site(self, name: str) -> SiteEntry:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def settings(self) -> dict[str, Any]:
        """The fields a resumed collection must reproduce exactly."""
        keys = (
            "model_spec",
            "fingerprint",
            "dtype",
            "context",
            "bos",
            "batch_size",
            "shard_tokens",
            "source",
            "seed",
            "autocast",
            "requested_tokens",
            "packing",
        )
        d = {k: getattr(self, k) for k in keys}
        d["sites"] = [(s.name, tuple(s.shape)) for s in self.sites]
        return d


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def header(
    name: str, dtype: torch.dtype, shape: tuple[int, ...], *, align: int = ALIGN, metadata: dict[str, str] | None = None
) -> bytes:
    """A safetensors header for one tensor, padded with spaces to ``align`` bytes (data starts there)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    obj: dict[str, Any] = {"__metadata__": {"format": FORMAT, **(metadata or {})}}
    obj[name] = {"dtype": ST_CODES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}
    text = json.dumps(obj, separators=(",", ":")).encode()
    room = align - 8
    if len(text) > room:
        raise CheckpointError(f"shard header of {len(text)} bytes does not fit the {room}-byte header region")
    return struct.pack("<Q", room) + text + b" " * (room - len(text))


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """``(data offset, parsed header)`` of a safetensors file, validated (regular file, offsets consistent with
    dtype x shape and with the file size); CheckpointError naming the file otherwise."""
    return safetensors_header(path, what="shard")


def check_shard(path: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...], align: int) -> None:
    """Validate one shard file against what the manifest expects; raise CheckpointError naming the file."""
    offset, hdr = read_header(path)
    meta = hdr.get("__metadata__") or {}
    if meta.get("format") != FORMAT or name not in hdr:
        raise CheckpointError(
            f"shard {path} is not a mechwork activation shard (expected tensor {name!r}, "
            f"found {sorted(k for k in hdr if k != '__metadata__')})"
        )
    if len(hdr) != 2:
        raise CheckpointError(f"shard {path} holds more than the one tensor {name!r}: foreign file")
    info = hdr[name]
    want = {"dtype": ST_CODES[dtype], "shape": list(shape)}
    got = {"dtype": info.get("dtype"), "shape": info.get("shape")}
    if got != want:
        raise CheckpointError(
            f"shard {path} holds {got['dtype']} {got['shape']} but the manifest expects {want['dtype']} {want['shape']}"
        )
    if offset != align:
        raise CheckpointError(
            f"shard {path} has its data at byte {offset}, expected {align}: rewritten by another tool"
        )
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    size = path.stat().st_size
    if size != offset + nbytes:
        raise CheckpointError(
            f"shard {path} has {size} bytes, expected {offset + nbytes} ({shape[0]} rows): truncated or extended"
        )


def tensor_bytes(t: Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (any dtype, bfloat16 included)."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("tensor_bytes needs a contiguous CPU tensor")
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def write_all(f: Any, data: memoryview) -> int:
    """Write every byte of ``data`` to a raw (unbuffered) file, looping over short writes."""
    total = len(data)
    while len(data):
        n = f.write(data)
        if n is None or n <= 0:
            raise OSError(f"short write to {getattr(f, 'name', 'file')}")
        data = data[n:]
    return total


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def align_rows(row_bytes: list[int], align: int) -> int:
    """Smallest row count ``r`` such that ``r * b`` is a multiple of ``align`` for every row size ``b``."""
    r = 1
    for b in row_bytes:
        r = math.lcm(r, align // math.gcd(align, b))
    return r
