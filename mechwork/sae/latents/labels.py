"""Labels that say how sure they are.

On the generated language every token carries a ground-truth tag (``gender:pronoun``, ``ioi:IO``,
``style:adj+`` ...). A latent's label is chosen **from the contexts its page shows** (its top contexts and its
quantile samples): among the tags carried by at least a third of those contexts, the one with the best F1 on the shown fold of
documents.
It is then **scored on held-out documents** (the other fold, never shown, never used to choose): precision =
P(tag | latent fires), recall = P(latent fires | tag), F1. So the label cannot disagree with the examples, and its
score is not inflated by the choice.

Levels (thresholds justified in ``STRONG_F1``):

* ``strong``: held-out F1 >= ``STRONG_F1`` -- the label is the tag itself;
* ``narrow``: held-out precision >= ``NARROW_PRECISION`` but F1 lower -- "part of <tag>" (fires on a subset);
* ``weak``: held-out F1 >= ``WEAK_F1`` -- "weak: <tag>";
* ``none``: below, or fewer than ``MIN_HELDOUT`` held-out firings -- "unlabelled", with the best guess and its
  score beside it.

Without tags (any other model) the label is a top-token summary of the shown contexts, which says how many of
them it covers and claims nothing more.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

#: F1 >= 0.5 forces precision and recall both >= 1/3 (F1 <= 2m/(1+m) for m = min(P, R)): at least a third of the
#: latent's firings carry the tag and it fires on at least a third of the tag's tokens. Chance F1 of a latent
#: firing independently of a tag is 2pf/(p+f) <= 0.1 for tag and firing rates p, f <= 5%, as on this language.
STRONG_F1 = 0.5
#: a tag is a candidate only if at least this share of the shown contexts (top and samples together) carry it
MIN_SHARE = 1 / 3
WEAK_F1 = 0.2
NARROW_PRECISION = 0.8
#: fewer held-out firings than this and no label is given (the scores would be noise)
MIN_HELDOUT = 10


@dataclass(frozen=True)
class Label:
    """A latent's label and its evidence.

    Attributes
    ----------
    text : str
        What pages show, e.g. ``"gender:pronoun"``, ``"part of ioi:IO"``, ``"unlabelled"``, ``"' the' (9/12)"``.
    level : str
        ``strong``, ``narrow``, ``weak``, ``none`` (tags) or ``tokens`` (top-token summary) or ``dead``.
    tag : str or None
        The chosen ground-truth tag (also for ``none``: the best guess).
    precision, recall, f1 : float or None
        Held-out scores of ``tag``.
    f1_shown : float or None
        F1 of ``tag`` on the shown fold (the one it was chosen on).
    agree_top, agree_samples : tuple of int
        (shown contexts carrying the tag, shown contexts), for the top contexts and the quantile samples.
    n_heldout : int
        Firings of the latent on held-out tokens.
    """

    text: str
    level: str
    tag: str | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    f1_shown: float | None = None
    agree_top: tuple[int, int] = (0, 0)
    agree_samples: tuple[int, int] = (0, 0)
    n_heldout: int = 0

    def describe(self) -> str:
        """One line with the evidence."""
        if self.level == "dead":
            return self.text
        if self.level == "tokens":
            return f"{self.text} -- top-token summary of the shown contexts (no ground-truth tags for this model or source)"
        if self.tag is None:
            return self.text
        a, b = self.agree_top
        c, d = self.agree_samples
        return (
            f"{self.text} -- held-out precision {self.precision:.2f}, recall {self.recall:.2f}, F1 {self.f1:.2f} "
            f"({self.n_heldout} held-out firings); {a}/{b} top contexts and {c}/{d} samples are {self.tag}"
        )


def _silent(stats: Any, j: int) -> Label:
    """Label of a latent with no shown context: dead, or firing only on held-out documents."""
    n = int(stats.count[j])
    if n == 0:
        return Label("never fires on these tokens", "dead")
    return Label(f"unlabelled (fires {n} times, only on held-out documents)", "none")


def _prf(counts: torch.Tensor, fires: torch.Tensor, totals: torch.Tensor) -> tuple[torch.Tensor, ...]:
    c = counts.double()
    p = c / fires.double()[:, None].clamp_min(1)
    r = c / totals.double()[None].clamp_min(1)
    return p, r, 2 * p * r / (p + r).clamp_min(1e-12)


def tag_labels(stats: Any) -> list[Label]:
    """Labels of every latent from ground-truth tags (see the module docstring)."""
    names = stats.tag_names
    n_tags = len(names)
    d = stats.d_sae
    shown = torch.cat([stats.top.tag, stats.sample.tag], 1)  # [d, K+R], -1 in empty slots
    share = torch.zeros(d, n_tags + 1)
    share.scatter_add_(1, shown.clamp_min(-1) + 1, torch.ones_like(shown, dtype=torch.float))
    n_shown = share[:, 1:].sum(1, keepdim=True)
    fires = n_shown[:, 0] > 0
    cand = share[:, 1:] >= MIN_SHARE * n_shown.clamp_min(1)
    counts = stats.tag_counts[:, :, :n_tags]
    totals = stats.tag_totals[:, :n_tags]
    _, _, f1_sel = _prf(counts[0], counts[0].sum(1), totals[0])
    choice = torch.where(cand, f1_sel, torch.full_like(f1_sel, -1.0)).argmax(1)
    rows = torch.arange(d)
    p1, r1, f1 = (t[rows, choice] for t in _prf(counts[1], counts[1].sum(1), totals[1]))
    fsel = f1_sel[rows, choice]
    n_held = counts[1].sum(1)
    agree_top = ((stats.top.tag == choice[:, None]).sum(1), (stats.top.tag >= 0).sum(1))
    agree_smp = ((stats.sample.tag == choice[:, None]).sum(1), (stats.sample.tag >= 0).sum(1))
    has = cand.any(1)
    out = []
    for j in range(d):
        if not bool(fires[j]):
            out.append(_silent(stats, j))
            continue
        if not bool(has[j]):
            out.append(Label("unlabelled (no tag holds a third of the shown contexts)", "none"))
            continue
        tag = names[int(choice[j])]
        p, r, f = float(p1[j]), float(r1[j]), float(f1[j])
        if int(n_held[j]) < MIN_HELDOUT:
            level, text = "none", f"unlabelled (only {int(n_held[j])} held-out firings)"
        elif f >= STRONG_F1:
            level, text = "strong", tag
        elif p >= NARROW_PRECISION:
            level, text = "narrow", f"part of {tag}"
        elif f >= WEAK_F1:
            level, text = "weak", f"weak: {tag}"
        else:
            level, text = "none", "unlabelled"
        out.append(
            Label(
                text,
                level,
                tag,
                p,
                r,
                f,
                float(fsel[j]),
                (int(agree_top[0][j]), int(agree_top[1][j])),
                (int(agree_smp[0][j]), int(agree_smp[1][j])),
                int(n_held[j]),
            )
        )
    return out


def token_labels(stats: Any, max_tokens: int = 3) -> list[Label]:
    """Top-token summaries: the most common centre tokens of each latent's shown contexts."""
    centre = stats.left
    toks = torch.cat([stats.top.tokens[:, :, centre], stats.sample.tokens[:, :, centre]], 1).tolist()
    out = []
    for row in toks:
        ids = [t for t in row if t >= 0]
        if not ids:
            out.append(_silent(stats, len(out)))
            continue
        common = Counter(ids).most_common(max_tokens)
        strings = stats.strings([t for t, _ in common])
        text = ", ".join(f"{s!r} ({n}/{len(ids)})" for s, (_, n) in zip(strings, common))
        out.append(Label(text, "tokens"))
    return out
