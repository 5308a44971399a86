"""Config (de)serialisation for frozen dataclasses.

Configs are frozen dataclasses that inherit :class:`Config`. ``to_dict``/``to_json`` write plain JSON;
``from_dict``/``from_json`` validate field names (unknown fields are an error naming the closest known
field), rebuild nested dataclasses and convert lists back to tuples where the annotation says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .io import PathLike, atomic_write_json, read_json

C = TypeVar("C", bound="Config")


def _version() -> str:
    from .. import __version__

    return __version__


class Config:
    """Mixin for frozen dataclass configs: JSON round trip with strict field checking."""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self, path: PathLike | None = None, **extra: Any) -> str:
        """Serialise to JSON; with ``path`` also write it atomically (``extra`` keys are added beside the fields)."""
        d = {**self.to_dict(), **extra}
        if path is not None:
            atomic_write_json(path, d)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any], *, ignore: tuple[str, ...] = (), source: str = "") -> C:
        return _from_plain(cls, d, ignore=ignore, source=source)

    @classmethod
    def from_json(cls: type[C], path_or_text: PathLike | str, *, ignore: tuple[str, ...] = ()) -> C:
        """Load from a JSON file path or a JSON string. Keys listed in ``ignore`` (metadata) are skipped."""
        text = str(path_or_text)
        if text.lstrip().startswith("{"):
            return cls.from_dict(json.loads(text), ignore=ignore, source="<json>")
        return cls.from_dict(read_json(Path(text), what="config"), ignore=ignore, source=text)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def diff(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ between two configs: ``{field: (self_value, other_value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _from_plain(cls: type, d: Any, *, ignore: tuple[str, ...] = (), source: str = "") -> Any:
    where = f" in {source}" if source else ""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}{where}: expected a JSON object, found {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields and k not in ignore]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(fields), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{cls.__name__}{where}: unknown field(s) {', '.join(hints)}; valid fields: {', '.join(fields)}"
        )
    hints_t = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{cls.__name__}{where}: required field {name!r} is missing")
            continue
        kwargs[name] = _coerce(hints_t.get(name, Any), d[name], f"{cls.__name__}.{name}{where}")
    check_limits(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{cls.__name__}{where}: {e}") from e


def _nested(tp: type, value: Any, where: str) -> Any:
    """A nested dataclass: a Config rebuilds through its own ``from_dict`` (which may pick a subclass)."""
    if issubclass(tp, Config):
        return tp.from_dict(value, source=where)
    return _from_plain(tp, value, source=where)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) checked against the annotation ``tp`` and converted where JSON has no such type
    (lists -> tuples, ints -> floats); a value of the wrong type is a :class:`ConfigError` naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if tp in (int, float, bool, str) or origin in (tuple, list, dict) or dataclasses.is_dataclass(tp):
            raise ConfigError(f"{where}: must not be null")
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _nested(tp, value, where)
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}; found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e).removeprefix(f"{where}: "))
        raise ConfigError(f"{where}: {' or '.join(errors)}")
    if origin is tuple or tp is tuple or origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__} {_short(value)}")
        if origin is list:
            return [_coerce(args[0], v, where) for v in value] if args else list(value)
        if args and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and args != ((),):
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} items, found {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, found {type(value).__name__} {_short(value)}")
        if len(args) == 2:
            return {_coerce(args[0], k, where): _coerce(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {_short(value)}")
        if value != value:
            raise ConfigError(f"{where}: expected a number, found NaN")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {_short(value)}")
        return value
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_limits(cls: type, values: dict[str, Any], where: str = "") -> None:
    """Check the numeric fields named in ``cls.LIMITS`` (``{field: (low, high)}``, inclusive, ``None`` = open) so
    that no loop or allocation ever runs on an absurd size read from a file (``n_layers: 1e20``)."""
    for name, (lo, hi) in getattr(cls, "LIMITS", {}).items():
        v = values.get(name)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{cls.__name__}.{name}{where}: {v!r} is outside the allowed range {rng}")


def check_choices(cfg: Any, *names: str) -> None:
    """Check the ``Literal[...]``-annotated fields of a dataclass config (all of them, or ``names``): a value
    outside the annotation's choices is a :class:`ConfigError` naming the field, the choices and the closest one.

    Call it from ``__post_init__``; the annotation is then the one place that lists the allowed values (the CLI
    derives its ``choices`` from it too, see :mod:`mechwork.cli.options`).
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if names and f.name not in names:
            continue
        tp = hints.get(f.name)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next((a for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal), tp)
        if typing.get_origin(tp) is not typing.Literal:
            continue
        value, choices = getattr(cfg, f.name), typing.get_args(tp)
        if value is None and type(None) in typing.get_args(hints.get(f.name)):
            continue
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name} must be one of {', '.join(map(repr, choices))}; got {value!r}{hint}"
            )


def save_config(path: PathLike, cfg: Config, **extra: Any) -> None:
    """Write ``cfg`` to ``path`` as JSON with the mechwork version and any extra metadata keys."""
    cfg.to_json(path, mechwork_version=_version(), **extra)
