"""The ``mechwork`` command: one module per subcommand group, each registering itself with ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..core.errors import MechworkError

# subcommand modules, in the order `mechwork --help` lists them; each defines register(subparsers)
COMMANDS = ("info", "demo", "zoo", "cache", "sae", "patch", "circuit", "erase", "project", "lens", "steer")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="mechwork",
        description="mechwork: mechanistic interpretability workbench. Every subcommand has its own --help.",
        epilog="Start with `mechwork demo` (a tour of the shipped toy-mixed model) or `mechwork zoo list`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mechwork {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except MechworkError as e:
        print(f"mechwork: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechwork: interrupted", file=sys.stderr)
        return 130
