"""mechwork's SAE architectures in SAELens's registry: ``import mechwork.sae.saelens`` registers them.

SAELens needs nothing of mechwork for the folders mechwork writes by default: TopK, ReLU, JumpReLU and MFR
SAEs are saved under SAELens's own architecture names (:mod:`mechwork.sae.io`). This module is for the rest:
mechwork-only architectures (the SAE neural operators), folders written with ``portable=False`` and folders of
mechwork <= 0.1 (``mechwork_topk``, ``mechwork_relu``). Importing it imports SAELens and registers, for every
name in :mod:`mechwork.sae.registry`, ``"mechwork_<arch> (import mechwork.sae.saelens)"`` (the name such a
folder's ``cfg.json`` carries, so SAELens's ``KeyError`` without this import names the import) plus the two
old names. ``import mechwork.sae`` imports neither this module nor SAELens and installs no import hook.

The registered inference class wraps the mechwork module: ``encode``/``decode`` run mechwork's code through
SAELens's hook points (``hook_sae_input``, ``hook_sae_acts_post``, ``hook_sae_recons``), so
``HookedSAETransformer.add_sae`` and the SAELens analysis tools work on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_REGISTERED: set[str] = set()
LEGACY = ("mechwork_topk", "mechwork_relu")


def _make(key: str) -> tuple[type, type]:
    """A SAELens (SAE class, config class) pair for one registry key."""
    import torch
    from sae_lens.saes.sae import SAE as SaeLensSAE
    from sae_lens.saes.sae import SAEConfig as SaeLensConfig

    from .base import SAE
    from .config import SAEConfig

    @dataclass
    class MechworkSAEConfig(SaeLensConfig):
        """SAELens config of a mechwork SAE; ``mechwork`` is cfg.json's ``"mechwork"`` section."""

        mechwork: dict[str, Any] = field(default_factory=dict)

        @classmethod
        def architecture(cls) -> str:
            return key

    class MechworkSAE(SaeLensSAE):
        """SAELens inference class that runs a mechwork SAE (``self.inner``)."""

        cfg: MechworkSAEConfig

        def _inner_config(self) -> SAEConfig:
            mw = self.cfg.mechwork or {}
            if "config" not in mw:
                raise ValueError(f"cfg.json of this {key!r} folder has no 'mechwork' section with the SAE's config")
            return SAEConfig.from_dict(mw["config"])

        def initialize_weights(self) -> None:
            self.inner = SAE(self._inner_config(), meta=dict((self.cfg.mechwork or {}).get("meta") or {})).to(
                self.device
            )

        def process_state_dict_for_loading(self, state_dict: dict[str, torch.Tensor]) -> None:
            inner = SAE(self._inner_config(), meta=dict((self.cfg.mechwork or {}).get("meta") or {}))
            raw = {"rescale_acts_by_decoder_norm": False}
            inner.import_tensors({k: v.cpu() for k, v in state_dict.items()}, raw, "sae_weights.safetensors")
            self.inner = inner
            state_dict.clear()
            state_dict.update({f"inner.{k}": v for k, v in inner.state_dict().items()})

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return self.hook_sae_acts_post(self.inner.encode(self.hook_sae_input(x)))

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            return self.hook_sae_recons(self.inner.decode(feature_acts))

    MechworkSAE.__name__ = MechworkSAE.__qualname__ = f"Mechwork{key.split()[0].title().replace('_', '')}SAE"
    return MechworkSAE, MechworkSAEConfig


def register() -> list[str]:
    """Register every mechwork architecture with SAELens (idempotent; imports SAELens). Returns the new keys."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

    from . import registry
    from .io import REGISTER_HINT

    keys = [f"mechwork_{n}{REGISTER_HINT}" for n in registry.names()] + list(LEGACY)
    new = []
    for key in keys:
        if key in _REGISTERED or key in SAE_CLASS_REGISTRY:
            continue
        register_sae_class(key, *_make(key))
        _REGISTERED.add(key)
        new.append(key)
    return new


try:
    register()
except ImportError as e:  # pragma: no cover - SAELens not installed
    raise ImportError(
        f"mechwork.sae.saelens registers mechwork's SAEs with SAELens, which is not installed ({e})"
    ) from e
