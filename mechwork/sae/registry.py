"""One registry of SAE architectures: a name maps to ``(module class, config class)``, as in SAELens.

The built-in names are the :data:`Architecture` literal; :func:`register` adds more. Each architecture lives in
its own module with its own frozen config dataclass (``sae/topk.py``: :class:`~mechwork.sae.topk.TopKSAE` and
:class:`~mechwork.sae.topk.TopKConfig`, ...), and everything that builds an SAE from a name (the trainer,
:func:`mechwork.sae.load`, ``SAEConfig(architecture=...)``) asks this registry. Built-ins are imported lazily
on first lookup, so importing :mod:`mechwork.sae` stays cheap and nothing is installed as a side effect.

Example::

    from mechwork.sae import registry
    registry.names()                         # ['topk', 'relu', 'jumprelu', 'mfr', 'lifted', 'cnn', 'fno', ...]
    entry = registry.get("topk")             # Entry(name='topk', module=TopKSAE, config=TopKConfig, ...)
    registry.register("my_topk", MyTopKSAE, MyTopKConfig)
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from .base import SAE
    from .config import SAEConfig

#: the architectures mechwork ships (``register`` adds others at run time)
Architecture = Literal["topk", "relu", "jumprelu", "mfr", "lifted", "cnn", "fno"]

# name -> (module path, SAE class name, config class name): imported on first use
_BUILTIN: dict[str, tuple[str, str, str]] = {
    "topk": ("mechwork.sae.topk", "TopKSAE", "TopKConfig"),
    "relu": ("mechwork.sae.relu", "ReLUSAE", "ReLUConfig"),
    "jumprelu": ("mechwork.sae.relu", "JumpReLUSAE", "JumpReLUConfig"),
    "mfr": ("mechwork.sae.mfr", "MFRSAE", "MFRConfig"),
    "lifted": ("mechwork.sae.operators", "LiftedSAE", "LiftedConfig"),
    "cnn": ("mechwork.sae.operators", "CNNSAE", "CNNConfig"),
    "fno": ("mechwork.sae.operators", "FNOSAE", "FNOConfig"),
}
assert set(_BUILTIN) == set(get_args(Architecture))
#: built-in architectures the trainer trains (the generic ``SAEConfig(...)`` accepts any of their fields)
BUILTIN_TRAINABLE: tuple[str, ...] = ("topk", "relu", "mfr", "lifted", "cnn", "fno")
INFERENCE_ONLY: tuple[str, ...] = ("jumprelu",)


@dataclass(frozen=True)
class Entry:
    """One registered architecture.

    Attributes
    ----------
    name : str
        The registry key (``SAEConfig.architecture``).
    module : type[SAE]
        The ``nn.Module`` class built for it.
    config : type[SAEConfig]
        Its frozen config dataclass.
    """

    name: str
    module: type[SAE]
    config: type[SAEConfig]

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, module={self.module.__name__}, config={self.config.__name__})"


_REGISTRY: dict[str, Entry] = {}


def _load_builtin(name: str) -> None:
    mod_name, cls_name, cfg_name = _BUILTIN[name]
    mod = importlib.import_module(mod_name)
    if name not in _REGISTRY:  # the module may have registered itself on import
        _REGISTRY[name] = Entry(name, getattr(mod, cls_name), getattr(mod, cfg_name))


def register(name: str, module: type[SAE], config: type[SAEConfig], *, replace: bool = False) -> Entry:
    """Register ``name -> (module, config)``.

    ``module`` subclasses :class:`mechwork.sae.base.SAE`; ``config`` subclasses :class:`mechwork.sae.SAEConfig`
    and its ``architecture`` field defaults to ``name``. Re-registering a name raises unless ``replace``.
    """
    from .base import SAE
    from .config import SAEConfig

    if not (isinstance(module, type) and issubclass(module, SAE)):
        raise ConfigError(f"{module!r} is not a subclass of mechwork.sae.SAE")
    if not (isinstance(config, type) and issubclass(config, SAEConfig)):
        raise ConfigError(f"{config!r} is not a subclass of mechwork.sae.SAEConfig")
    default = config.__dataclass_fields__["architecture"].default
    if default != name:
        raise ConfigError(
            f"{config.__name__}.architecture defaults to {default!r}; registering it as {name!r} needs it to be {name!r}"
        )
    if not replace and (name in _REGISTRY or name in _BUILTIN):
        existing = get(name)
        if (existing.module, existing.config) != (module, config):
            raise ConfigError(f"SAE architecture {name!r} is already registered ({existing}); pass replace=True")
        return existing
    entry = Entry(name, module, config)
    _REGISTRY[name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a name added by :func:`register` (built-ins cannot be removed)."""
    if name in _BUILTIN:
        raise ConfigError(f"{name!r} is a built-in SAE architecture and cannot be unregistered")
    if _REGISTRY.pop(name, None) is None:
        raise ConfigError(f"SAE architecture {name!r} is not registered")


def get(name: str) -> Entry:
    """The entry of ``name``; an unknown name raises a :class:`ConfigError` listing the close ones."""
    if name not in _REGISTRY and name in _BUILTIN:
        _load_builtin(name)
    if name not in _REGISTRY:
        known = names()
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown SAE architecture {name!r}{hint}; registered: {', '.join(known)}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Every registered name: the built-ins in :data:`Architecture` order, then the others."""
    return list(_BUILTIN) + [n for n in _REGISTRY if n not in _BUILTIN]


def trainable_names() -> list[str]:
    """Names the trainer can train (every registered one but the inference-only ``jumprelu``)."""
    return [n for n in names() if n not in INFERENCE_ONLY]


def all_entries() -> list[Entry]:
    """Every entry (imports the built-in modules)."""
    return [get(n) for n in names()]


def module_for(name: str) -> type[SAE]:
    return get(name).module


def config_for(name: str) -> type[SAEConfig]:
    return get(name).config


__all__ = [
    "Architecture",
    "Entry",
    "register",
    "get",
    "names",
    "trainable_names",
    "unregister",
    "all_entries",
    "module_for",
    "config_for",
]
