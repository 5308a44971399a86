"""Strength x layer sweeps of fitted steerers: behaviour vs fluency cost, the Pareto front, best at a budget."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.io import PathLike, atomic_write_json, read_json
from .evaluate import evaluate
from .steerer import Steerer


@dataclass
class SweepResult:
    """Rows of ``{method, label, sites, strength, rate, word_rate, styled, kl, delta_ce, ...}``."""

    rows: list[dict[str, Any]]
    baseline: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        labels = sorted({r["label"] for r in self.rows})
        return f"SweepResult({len(self.rows)} points, {len(labels)} steerers: {', '.join(labels)[:120]})"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ("label", "strength", "rate", "kl", "delta_ce"))
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(f'{r[c]:.3g}' if isinstance(r.get(c), float) else str(r.get(c)))}</td>"
                for c in ("label", "strength", "rate", "kl", "delta_ce")
            )
            + "</tr>"
            for r in self.rows
        )
        return f"<div><b>Steering sweep</b> ({len(self.rows)} points)<table><tr>{head}</tr>{body}</table></div>"

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def pareto(self, *, behaviour: str = "rate", cost: str = "kl", by: str | None = None) -> list[dict[str, Any]]:
        """Points no other point beats on both axes (higher behaviour, lower cost); per ``by`` group if given."""
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault(r.get(by) if by else None, []).append(r)
        front = []
        for rows in groups.values():
            best = float("-inf")
            for r in sorted(rows, key=lambda r: (r[cost], -r[behaviour])):
                if r[behaviour] > best:
                    front.append(r)
                    best = r[behaviour]
        return front

    def best(self, *, budget: float, behaviour: str = "rate", cost: str = "kl", by: str = "method") -> dict[Any, dict]:
        """Per ``by`` group, the point with the highest behaviour whose cost is within ``budget``."""
        out: dict[Any, dict] = {}
        for r in self.rows:
            if r[cost] <= budget and (r[by] not in out or r[behaviour] > out[r[by]][behaviour]):
                out[r[by]] = r
        return out

    def plot(self, *, behaviour: str = "rate", cost: str = "kl", title: str | None = None) -> Any:
        from .plots import behaviour_vs_cost

        return behaviour_vs_cost(self, behaviour=behaviour, cost=cost, title=title)

    def save(self, path: PathLike) -> Path:
        atomic_write_json(path, {"format": "mechwork-steering-sweep", "baseline": self.baseline, "rows": self.rows})
        return Path(path)

    @classmethod
    def load(cls, path: PathLike) -> SweepResult:
        raw = read_json(path, what="steering sweep")
        return cls(raw["rows"], raw.get("baseline", {}))


def sweep(
    model: Any,
    steerers: Steerer | dict[str, Steerer],
    *,
    strengths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    layers: bool = False,
    to: str | None = None,
    concept: str | None = None,
    n: int = 64,
    n_text: int = 64,
    max_new_tokens: int = 24,
    seed: int = 0,
    side: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Evaluate each steerer at each strength (and, with ``layers``, restricted to each of its sites alone).

    Returns a :class:`SweepResult` with the unsteered baseline; ``.plot()`` draws behaviour vs KL with each
    method's Pareto front, ``.best(budget=...)`` the best behaviour within a fluency budget.
    """
    from tqdm.auto import tqdm

    named = steerers if isinstance(steerers, dict) else {steerers.method: steerers}
    jobs = []
    for label, st in named.items():
        variants = [(label, st, "all")]
        if layers and len(st.sites) > 1:
            variants += [(f"{label} @ {s}", st.select([s]), s) for s in st.sites]
        for lab, v, where in variants:
            for lam in strengths:
                jobs.append((label, lab, v, where, lam))
    kw: dict[str, Any] = dict(
        to=to, concept=concept, n=n, n_text=n_text, max_new_tokens=max_new_tokens, seed=seed, side=side
    )
    base = evaluate(model, None, **kw)
    rows = []
    for label, lab, st, where, lam in tqdm(jobs, desc="steering sweep", disable=not progress):
        r = evaluate(model, st, strength=lam, **kw)
        rows.append(
            {
                "method": st.method,
                "steerer": label,
                "label": lab,
                "sites": where,
                **r,
                "parameters": st.n_parameters,
                "support": sum(st.support().values()),
                "fit_seconds": st.config.fit_seconds,
                "n_source": st.config.n_source,
            }
        )
    return SweepResult(rows, base)
