"""Compatibility names of the pre-registry SAE module (``mechwork.sae.model``).

The SAE family now lives one file per architecture (:mod:`~mechwork.sae.base`, :mod:`~mechwork.sae.topk`,
:mod:`~mechwork.sae.relu`, ...) behind :mod:`mechwork.sae.registry`. ``SAE(cfg)`` still builds the module of
``cfg.architecture``; :func:`register_architecture` is the old one-argument registration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from ..core.errors import ConfigError
from . import registry
from .base import LN_EPS, SAE, StepOutput, geometric_median


class _Classes(Mapping):
    """Read-only view ``name -> module class`` of the registry (the old ``SAE_CLASSES`` dict)."""

    def __getitem__(self, name: str) -> type[SAE]:
        try:
            return registry.module_for(name)
        except ConfigError as e:
            raise KeyError(name) from e

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names())

    def __len__(self) -> int:
        return len(registry.names())


SAE_CLASSES: Mapping[str, type[SAE]] = _Classes()


def register_architecture(name: str, cls: type[SAE]) -> None:
    """Make ``SAEConfig(architecture=name)`` build ``cls`` (a subclass of :class:`SAE`).

    The pre-registry form: ``cls`` keeps TopK behaviour and TopK's config fields unless it derives from another
    architecture's module. New code calls :func:`mechwork.sae.registry.register` with its own config class.
    """
    from .topk import TopKSAE

    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise ConfigError(f"{cls!r} is not a subclass of mechwork.sae.SAE")
    if not cls.activation:  # a bare subclass of the base: TopK behaviour, as before
        cls = type(cls.__name__, (cls, TopKSAE), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    parents = [e for e in registry.all_entries() if issubclass(cls, e.module)]
    base_cfg = max(parents, key=lambda e: len(e.module.__mro__)).config
    cfg_cls = dataclasses.make_dataclass(
        f"{cls.__name__}Config",
        [("architecture", str, dataclasses.field(default=name))],
        bases=(base_cfg,),
        frozen=True,
    )
    registry.register(name, cls, cfg_cls, replace=True)


__all__ = ["SAE", "StepOutput", "geometric_median", "SAE_CLASSES", "register_architecture", "LN_EPS"]
