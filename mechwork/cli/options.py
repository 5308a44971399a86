"""Derive command-line options from the code they configure: one declaration, one source of truth.

A config dataclass (or a function's keyword parameters) already says each setting's name, type, default, allowed
values (a ``Literal`` annotation, or ``{"a", "b"}`` in the numpy docstring) and meaning (the docstring's
``Parameters`` section). :func:`add_options` turns the fields you name into argparse options from exactly that;
:func:`given` reads back the ones the user set, ready for ``cfg.replace(**given(args, Cfg))``. Shared flags
(``--backend``, ``--device``, ``--seed``, ``--json``, ``--dtype``) come from one table via :func:`shared`;
``KEY=VALUE`` lists go through :func:`key_values`; :func:`command` / :func:`group` build subcommands whose
``--help`` ends with examples (those three live in :mod:`mechwork.cli.parsers`, re-exported here).

Example
-------
>>> from mechwork.sae.config import TrainConfig
>>> p = argparse.ArgumentParser()
>>> add_options(p, TrainConfig, ["batch_size", "lr", Opt("wandb_project", flag="wandb")])
>>> cfg = TrainConfig().replace(**given(p.parse_args(["--batch-size", "64"]), TrainConfig))
>>> cfg.batch_size
64
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.errors import ConfigError
from .parsers import SHARED, command, group, key_values, parse_value, shared

__all__ = [
    "Opt",
    "add_options",
    "given",
    "shared",
    "SHARED",
    "key_values",
    "parse_value",
    "command",
    "group",
    "int_arg",
    "docs",
]

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Opt:
    """How one field or parameter appears on the command line (everything else is derived).

    Parameters
    ----------
    name : str
        Field (dataclass) or parameter (function) name.
    flag : str or None
        Option name without dashes (default: the name with ``_`` -> ``-``; ``no-<name>`` for a bool that is
        on by default). A bool option is a flag that flips the default: ``Opt("sparse", flag="dense")`` sets
        ``sparse=False``.
    help : str or None
        Help text (default: the first sentence of the field's docstring entry).
    sweep : bool
        Take a comma-separated list of values (``--k 16,32``); :func:`given` returns a list.
    choices : sequence or callable or None
        Allowed values when the annotation does not say (a callable is asked at parser build time: registries);
        ``()``: free text, checked by the code (which accepts aliases, say).
    required : bool
        The option must be given.
    default : Any
        Default shown and used on the command line when it differs from the code's (else ``None``: the code's).
    metavar : str or None
    """

    name: str
    flag: str | None = None
    help: str | None = None
    sweep: bool = False
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    required: bool = False
    default: Any = None
    metavar: str | None = None


# ----------------------------------------------------------------------------------------------- docstrings
_PARAM_LINE = re.compile(r"^(?P<names>\*{0,2}[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*:\s*(?P<type>.*)$")


def docs(target: Any) -> dict[str, tuple[str, str]]:
    """``{name: (type text, description)}`` from the numpy ``Parameters`` section of ``target``'s docstring."""
    doc = inspect.getdoc(target) or ""
    lines = doc.splitlines()
    out: dict[str, tuple[str, str]] = {}
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Parameters") + 2
    except StopIteration:
        return out
    current: list[str] = []
    desc: list[str] = []

    def flush() -> None:
        for n in current:
            out[n] = (type_text, " ".join(desc).strip())

    type_text = ""
    for ln in lines[start:]:
        if ln and not ln.startswith(" "):
            m = _PARAM_LINE.match(ln)
            if m is None:  # the next section ("Returns", ...) or prose
                break
            flush()
            current = [n.strip().lstrip("*") for n in m["names"].split(",")]
            type_text, desc = m["type"].strip(), []
        elif ln.strip():
            desc.append(ln.strip())
    flush()
    return out


_ABBREVIATIONS = ("al", "e.g", "i.e", "etc", "vs", "cf", "approx")


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring entry, without reST markup (periods inside brackets do not count)."""
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1].isspace()):
            word = text[:i].rsplit(None, 1)[-1].lower() if text[:i].strip() else ""
            if word not in _ABBREVIATIONS:
                return text[:i].strip()
    return text.strip()


# ----------------------------------------------------------------------------------------------- types
def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        # str | Path, str | torch.dtype ...: the command line gives a string
        if len(args) == 1:
            return args[0]
        if str in args:
            return str
        return args[0]
    return tp


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """Allowed values of a ``Literal[...]`` annotation (optional or not), else ``None``."""
    tp = _unwrap_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def int_arg(text: str) -> int:
    """An integer; ``1e6`` and ``2_000_000`` are accepted when they are whole numbers."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v != int(v):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(v)


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _scalar(tp: Any) -> Callable[[str], Any]:
    if tp is int:
        return int_arg
    if tp is float:
        return _float_arg
    return str


def _one_of(allowed: tuple[Any, ...]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, allowed))}")
        return text

    return parse


def _list_of(conv: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return [conv(x) for x in items]

    parse.__name__ = f"list of {what}"
    return parse


def _type_hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations naming things not importable here: fall back to the raw ones
        return dict(getattr(target, "__annotations__", {}))


def _defaults(target: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(target):
        out = {}
        for f in dataclasses.fields(target):
            if f.default is not _MISSING:
                out[f.name] = f.default
            elif f.default_factory is not _MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = _MISSING
        return out
    sig = inspect.signature(target)
    return {n: (p.default if p.default is not inspect.Parameter.empty else _MISSING) for n, p in sig.parameters.items()}


def _doc_choices(type_text: str) -> tuple[str, ...] | None:
    m = re.match(r"\{(.*)\}", type_text)
    if not m:
        return None
    values = (x.strip().strip("\"'") for x in m[1].split(","))
    return tuple(v for v in values if v and v != "None")


def _fmt_default(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return str(v)


# ----------------------------------------------------------------------------------------------- derive options
def _namespace(target: Any) -> str:
    return target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    target: Any,
    fields: Iterable[str | Opt],
    *,
    ns: str | None = None,
) -> None:
    """Add one option per named field of the dataclass ``target`` (or keyword parameter of the function).

    Type, default, allowed values and help come from the annotation, the default and the docstring; an
    :class:`Opt` overrides the flag name, the help or marks a sweep. Options not given on the command line
    stay ``None`` in the namespace, so that :func:`given` returns only what the user set.

    ``ns`` groups the options of several targets under one name (default: the target's own), so that configs
    sharing fields (one per architecture, say) can each add theirs: a flag already added to ``parser`` under the
    same ``ns`` is skipped, and ``given(args, ns)`` returns the union.
    """
    ns = ns or _namespace(target)
    existing = getattr(parser, "_option_string_actions", {})
    hints = _type_hints(target)
    defaults = _defaults(target)
    doc = docs(target)
    for spec in fields:
        opt = spec if isinstance(spec, Opt) else Opt(spec)
        if opt.name not in defaults:
            raise ConfigError(f"{getattr(target, '__name__', target)} has no field or parameter {opt.name!r}")
        tp = _unwrap_optional(hints.get(opt.name, str))
        type_text, desc = doc.get(opt.name, ("", ""))
        if opt.choices is not None:
            choices = (opt.choices() if callable(opt.choices) else opt.choices) or None
        else:
            choices = literal_choices(tp) or _doc_choices(type_text)
        default = opt.default if opt.default is not None else defaults[opt.name]
        help_text = opt.help if opt.help is not None else _first_sentence(desc)
        flag = opt.flag or opt.name.replace("_", "-")
        dest = f"{ns}.{opt.name}"
        if "--" + flag in existing and existing["--" + flag].dest == dest:
            continue
        kw: dict[str, Any] = {"dest": dest, "default": None}
        if opt.required:
            kw["required"] = True
        kw["metavar"] = opt.metavar or flag.upper().replace("-", "_")
        if tp is bool and not opt.sweep:
            # a flag flips the default: --resume (default off), --no-bos (default on); no default: --x/--no-x
            kw.pop("metavar")
            if isinstance(default, bool):
                kw.update(action="store_const", const=not default)
                if default and opt.flag is None:
                    flag = "no-" + flag
                    if opt.help is None and help_text:
                        help_text = f"turn off: {help_text[:1].lower()}{help_text[1:]}"
            else:
                kw["action"] = argparse.BooleanOptionalAction
        else:
            elem = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
            conv: Callable[[str], Any] = _scalar(_unwrap_optional(elem))
            if choices is not None:
                conv = _one_of(tuple(choices))
                if not opt.sweep:
                    kw["choices"] = tuple(choices)
                    kw.pop("metavar")
                    conv = str
            if opt.sweep or typing.get_origin(tp) is tuple:
                kw["type"] = _list_of(conv, "values")
                if not opt.metavar:
                    kw["metavar"] = kw["metavar"] + ",..."
                if opt.sweep:
                    help_text += "; comma-separated values train one of each" if help_text else ""
            else:
                kw["type"] = conv
        shown = None if tp is bool else default
        if shown is not None and shown is not _MISSING and "default" not in help_text.lower():
            help_text += f" (default: {_fmt_default(shown)})"
        if opt.default is not None:
            kw["default"] = opt.default
        kw["help"] = help_text or None
        parser.add_argument("--" + flag, **kw)


def given(args: argparse.Namespace, target: Any) -> dict[str, Any]:
    """The fields of ``target`` (a class, function or ``ns`` name) set on the command line by
    :func:`add_options`: ``{field: value}``."""
    prefix = _namespace(target) + "."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}
