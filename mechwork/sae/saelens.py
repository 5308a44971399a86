"""mechwork's architectures in SAELens's registry, so ``sae_lens.SAE.load_from_disk`` loads mechwork folders.

Two inference architectures are registered (``sae_lens.registry.register_sae_class``):

``mechwork_topk``
    SAELens's ``topk`` plus a stored input scale ``norm_scale`` (mechwork's ``normalize="scale"``) and the
    alpha-k inference rule (``round(alpha * k)`` latents kept).
``mechwork_relu``
    SAELens's ``standard`` (ReLU) plus ``norm_scale``.

Registration needs SAELens imported, which takes seconds, so ``import mechwork.sae`` does not import it. It
registers at once if SAELens is already imported, and otherwise installs a post-import hook that registers
right after the first ``import sae_lens``. Either way, after ``import mechwork.sae`` a plain
``sae_lens.SAE.load_from_disk(folder)`` works. :func:`register` does it explicitly.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

ARCHS = ("mechwork_topk", "mechwork_relu")
_REGISTERED = False


def _classes() -> dict[str, tuple[type, type]]:
    import torch
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopK, TopKSAE, TopKSAEConfig

    class _NormScale:
        """Mixin: a stored constant input scale, applied on the way in and undone on the way out."""

        def _add_norm_scale(self) -> None:
            self.register_buffer("norm_scale", torch.ones((), dtype=self.dtype, device=self.device))

        def _setup_activation_normalization(self) -> None:
            super()._setup_activation_normalization()  # type: ignore[misc]
            if self.cfg.normalize_activations == "none":
                self.run_time_activation_norm_fn_in = lambda x: x * self.norm_scale
                self.run_time_activation_norm_fn_out = lambda x: x / self.norm_scale

    @dataclass
    class MechworkTopKSAEConfig(TopKSAEConfig):
        """``topk`` with ``alpha`` (inference keeps ``round(alpha * k)`` latents) and a stored input scale."""

        alpha: float = 1.0

        @classmethod
        def architecture(cls) -> str:
            return "mechwork_topk"

    class MechworkTopKSAE(_NormScale, TopKSAE):
        """SAELens inference class of mechwork's TopK SAE."""

        def initialize_weights(self) -> None:
            super().initialize_weights()
            self._add_norm_scale()

        def get_activation_fn(self) -> Any:
            return TopK(int(round(self.cfg.alpha * self.cfg.k)), use_sparse_activations=False)

    @dataclass
    class MechworkReLUSAEConfig(StandardSAEConfig):
        """``standard`` (ReLU) with a stored input scale."""

        @classmethod
        def architecture(cls) -> str:
            return "mechwork_relu"

    class MechworkReLUSAE(_NormScale, StandardSAE):
        """SAELens inference class of mechwork's ReLU SAE."""

        def initialize_weights(self) -> None:
            super().initialize_weights()
            self._add_norm_scale()

    return {
        "mechwork_topk": (MechworkTopKSAE, MechworkTopKSAEConfig),
        "mechwork_relu": (MechworkReLUSAE, MechworkReLUSAEConfig),
    }


def register() -> None:
    """Register mechwork's architectures with SAELens (idempotent; imports SAELens)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

    for name, (cls, cfg_cls) in _classes().items():
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, cls, cfg_cls)
    _REGISTERED = True


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps SAELens's loader: run the module, then register (every other attribute is the original's)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        try:
            register()
        except Exception as e:  # never break `import sae_lens` because of mechwork
            import warnings

            warnings.warn(f"mechwork could not register its SAE architectures with SAELens: {e}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "sae_lens":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install_hook() -> None:
    """Register now if SAELens is imported, else right after it is."""
    if "sae_lens" in sys.modules:
        try:
            register()
        except Exception:  # a half-imported or broken SAELens: explicit register() will say why
            pass
        return
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
