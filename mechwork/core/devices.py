"""Parsing and validating device and dtype arguments."""

from __future__ import annotations

import difflib

import torch

from .errors import ConfigError

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None, *, default: torch.dtype | None = None) -> torch.dtype | None:
    """Turn ``"bf16"``, ``"float32"``, ``torch.float16`` ... into a floating ``torch.dtype``.

    Raises :class:`ConfigError` listing the accepted names for anything else.
    """
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
        close = difflib.get_close_matches(key, list(_DTYPES), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {sorted(set(_DTYPES))}.{hint}")
    raise ConfigError(f"dtype must be a string or torch.dtype, got {type(dtype).__name__}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_device(device: str | torch.device | None) -> torch.device:
    """Validate a device string. ``None`` picks CUDA when available, else MPS, else CPU.

    Raises :class:`ConfigError` for malformed strings or devices that are not available here.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps' ({e})") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} requested but MPS is not available on this machine; use 'cpu'")
    return dev
