"""``Scrubber``: erasers at several sites, in causal order, saved and loaded as one artefact folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import Config, save_config
from ..core.errors import CheckpointError
from ..core.io import PathLike, atomic_dir, read_json
from .eraser import Eraser, ErasureHook


@dataclass(frozen=True)
class ScrubberConfig(Config):
    sites: tuple[str, ...]
    method: str
    aliases: tuple[str, ...] = ()
    model: str | None = None
    task: str | None = None
    format: str = "mechwork-scrubber"


@dataclass(frozen=True, eq=False)
class Scrubber:
    """Erasers at several sites, in causal order, each fitted on activations erased upstream."""

    erasers: tuple[tuple[str, Eraser], ...]
    aliases: tuple[str, ...] = ()

    @property
    def sites(self) -> list[str]:
        return [s for s, _ in self.erasers]

    def __iter__(self) -> Iterator[tuple[str, Eraser]]:
        return iter(self.erasers)

    def __len__(self) -> int:
        return len(self.erasers)

    def __getitem__(self, site: str) -> Eraser:
        """The eraser at ``site`` (full hook name or ``kind.layer`` alias)."""
        aliases = self.aliases or ("",) * len(self.erasers)
        for (s, e), a in zip(self.erasers, aliases):
            if site in (s, a):
                return e
        raise KeyError(f"no eraser at {site!r}; sites: {self.sites}")

    def hook(self, model: Any, *, positions: Any = None) -> ErasureHook:
        """All erasers hooked at their sites (a context manager, or ``.fwd_hooks``)."""
        return ErasureHook(model, self.erasers, positions=positions)

    def save(self, path: PathLike) -> Path:
        first = self.erasers[0][1].config if self.erasers else None
        cfg = ScrubberConfig(
            tuple(self.sites),
            first.method if first else "",
            tuple(self.aliases),
            first.model if first else None,
            first.task if first else None,
        )
        with atomic_dir(path) as tmp:
            save_config(tmp / "cfg.json", cfg)
            for i, (_, e) in enumerate(self.erasers):
                e.save(tmp / f"{i:02d}")
        return Path(path)

    @classmethod
    def load(cls, path: PathLike, *, device: Any = "cpu") -> Scrubber:
        path = Path(path)
        raw = read_json(path / "cfg.json", what="scrubber config")
        if not isinstance(raw, dict) or raw.get("format") != "mechwork-scrubber":
            raise CheckpointError(f"{path / 'cfg.json'} is not a mechwork scrubber config")
        cfg = ScrubberConfig.from_dict(raw, ignore=("mechwork_version",), source=str(path / "cfg.json"))
        return cls(
            tuple((s, Eraser.load(path / f"{i:02d}", device=device)) for i, s in enumerate(cfg.sites)), cfg.aliases
        )

    def __repr__(self) -> str:
        return f"Scrubber({len(self.erasers)} erasers at {', '.join(self.aliases or tuple(self.sites))})"

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        rows = [(a, e.method, e.rank, e.config.d_in) for a, (_, e) in zip(self.aliases or self.sites, self.erasers)]
        return card("Scrubber", {"erasers": len(self.erasers)}, table=(("site", "method", "rank", "d"), rows))
