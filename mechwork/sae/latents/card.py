"""One latent's page as an object: ``stats[j]`` (renders as a card in Jupyter, as text with ``print``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .labels import Label


@dataclass
class LatentCard:
    """Everything the dashboard shows about one latent.

    Attributes
    ----------
    latent : int
    freq : float
        Firing frequency over the counted tokens (``n_tokens``).
    count, special : int
        Firings on counted tokens; firings on special tokens left out of the statistics.
    max, mean : float
    quantiles : dict of float to float
        Activation quantiles over firing events.
    label : Label
    contexts : list of dict
        Top-activating contexts (see :meth:`LatentStats.contexts`).
    samples : list of dict
        Uniformly sampled firing events by quantile band (see :meth:`LatentStats.samples`).
    histogram : (edges, counts)
    logits : dict or None
        ``promoted``, ``suppressed``, ``embedding`` lists of ``(token, value)``.
    logits_reason : str or None
        Why logit effects are missing.
    """

    latent: int
    freq: float
    count: int
    special: int
    max: float
    mean: float
    quantiles: dict[float, float]
    label: Label
    contexts: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    histogram: tuple[list[float], list[int]]
    logits: dict[str, list[tuple[str, float]]] | None
    logits_reason: str | None
    n_tokens: int

    @classmethod
    def of(cls, stats: Any, j: int) -> LatentCard:
        from .stats import QUANTILES

        q = stats.quantiles(QUANTILES)[j].tolist()
        fires = int(stats.count[j])
        return cls(
            latent=j,
            freq=float(stats.freq()[j]),
            count=fires,
            special=int(stats.special[j]),
            max=float(stats.max[j]) if fires else 0.0,
            mean=float(stats.mean()[j]),
            quantiles=dict(zip(QUANTILES, q)),
            label=stats.labels[j],
            contexts=stats.contexts(j),
            samples=stats.samples(j),
            histogram=stats.histogram(j),
            logits=stats.logit_table(j),
            logits_reason=stats.logits_reason,
            n_tokens=stats.n_tokens,
        )

    def text(self, n: int = 5) -> str:
        """Plain-text view: the label with its evidence and the top ``n`` contexts (activating token in ``[[ ]]``)."""
        lines = [
            f"latent {self.latent}: {self.label.describe()}",
            f"  fires on {self.freq:.3%} of {self.n_tokens:,} tokens, max {self.max:.3g}, mean {self.mean:.3g}"
            + (f"; {self.special} firings on special tokens left out" if self.special else ""),
        ]
        if self.logits:
            up = ", ".join(repr(t) for t, _ in self.logits["promoted"][:5])
            down = ", ".join(repr(t) for t, _ in self.logits["suppressed"][:5])
            lines.append(f"  promotes {up}; suppresses {down}")
        if not self.contexts:
            lines.append("  (never fires on these tokens)")
        for c in self.contexts[:n]:
            toks = [f"[[{t}]]" if i == c["target"] else t for i, t in enumerate(c["tokens"])]
            tag = f"  <{c['tag']}>" if c["tag"] else ""
            lines.append(f"  {c['value']:8.3f}  {''.join(_spaced(toks))}{tag}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        extra = f", F1 {self.label.f1:.2f}" if self.label.f1 is not None else ""
        return f"LatentCard({self.latent}: {self.label.text}, freq {self.freq:.3%}{extra})"

    def _repr_html_(self) -> str:
        from ..dashboard.card import card_html

        return card_html(self)


def _spaced(tokens: list[str]) -> list[str]:
    """Word-level tokens are joined with spaces; tokens that carry their own spacing (BPE) are kept as they are."""
    own = any(t[:1].isspace() for t in tokens)
    return tokens if own else [t if i == 0 else " " + t for i, t in enumerate(tokens)]
