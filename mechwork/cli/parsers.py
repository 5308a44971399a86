"""The pieces of a subcommand that are not derived from a config: the shared flags (declared once, in
:data:`SHARED`), the one ``KEY=VALUE`` parser, and subcommand builders whose ``--help`` ends with examples.

(:mod:`mechwork.cli.options` re-exports everything here, so one import serves a CLI module.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..core.errors import ConfigError

__all__ = ["SHARED", "shared", "parse_value", "key_values", "command", "group"]


# ----------------------------------------------------------------------------------------------- shared flags
#: every flag shared by several subcommands, declared once
SHARED: dict[str, dict[str, Any]] = {
    "backend": {
        "default": "auto",
        "choices": ("auto", "hooked", "bridge"),
        "help": "TransformerLens backend: HookedTransformer, TransformerBridge, or auto (the first that works)",
    },
    "device": {"default": None, "help": "cpu, cuda, cuda:N, mps"},
    "seed": {"default": 0, "type": int, "help": "random seed"},
    "json": {"action": "store_true", "help": "print JSON instead of text"},
    "dtype": {"default": None, "help": "float32, float16 or bfloat16"},
}


def shared(*names: str, help: dict[str, str] | None = None, **defaults: Any) -> argparse.ArgumentParser:
    """A parent parser with the shared flags ``names`` (pass it as ``parents=[...]``).

    ``shared("backend", "device", device="cpu")`` changes a default (shown in the help);
    ``help={"json": "print the report as JSON"}`` the help text.
    """
    p = argparse.ArgumentParser(add_help=False)
    for n in names:
        if n not in SHARED:
            raise KeyError(f"no shared flag {n!r}; known: {', '.join(SHARED)}")
        kw = dict(SHARED[n])
        if n in defaults:
            kw["default"] = defaults[n]
        if help and n in help:
            kw["help"] = help[n]
        if kw.get("action") != "store_true" and kw.get("default") is not None:
            kw["help"] += f" (default: {kw['default']})"
        elif n == "device" and kw.get("default") is None and not (help and n in help):
            kw["help"] += " (default: CUDA if available)"
        p.add_argument(f"--{n}", **kw)
    return p


# ----------------------------------------------------------------------------------------------- KEY=VALUE
def parse_value(text: str) -> Any:
    """A command-line value as Python: ``true``/``false``, ``none``/``null``, int, float, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def key_values(items: str | Iterable[str] | None, *, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` settings from ``"a=1,b=x"`` or a list of such strings (a repeated flag), typed by
    :func:`parse_value`; dashes in keys become underscores. A malformed item is a :class:`ConfigError` naming
    ``flag``."""
    if items is None:
        return {}
    if isinstance(items, str):
        items = [items]
    out: dict[str, Any] = {}
    for chunk in items:
        for item in chunk.split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{flag} takes KEY=VALUE pairs separated by commas, got {item!r}")
            out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


# ----------------------------------------------------------------------------------------------- subcommands
def _epilog(examples: str | Sequence[str]) -> str | None:
    if not examples:
        return None
    if isinstance(examples, str):
        return examples
    return "examples:\n" + "\n".join(f"  {e}" for e in examples)


def command(
    sub: Any,
    name: str,
    *,
    help: str,
    description: str | None = None,
    examples: str | Sequence[str] = (),
    parents: Sequence[argparse.ArgumentParser] = (),
    func: Callable[[argparse.Namespace], int] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` keeps the description's layout and ends with ``examples``."""
    p = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=_epilog(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    if func is not None:
        p.set_defaults(func=func)
    return p


def group(
    sub: Any, name: str, *, help: str, description: str | None = None, examples: str | Sequence[str] = ()
) -> tuple[argparse.ArgumentParser, Any]:
    """A subcommand with its own subcommands (``mechwork sae train``); alone it prints its help."""
    p = command(sub, name, help=help, description=description, examples=examples)
    inner = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")

    def print_help(args: argparse.Namespace) -> int:
        p.print_help()
        return 0

    p.set_defaults(func=print_help)
    return p, inner
