"""Figures of projections, lenses and alignments, drawn by :mod:`mechwork.viz` (rendered in Jupyter;
``mechwork.viz.save_html`` exports a self-contained file). Every token string shown is HTML-escaped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import ConfigError
from ..viz import bars, escape_text, heatmap, markers, table

LENS_STATS = {
    "kl": ("KL(final || layer) [nats]", "Viridis"),
    "entropy": ("entropy [nats]", "Viridis"),
    "rank": ("rank of the final answer", "Viridis"),
    "prob": ("probability of the final answer", "Viridis"),
    "ce": ("next-token cross-entropy [nats]", "Viridis"),
}


def lens_heatmap(res: Any, model: Any, *, stat: str = "kl", prompt: int = 0, k: int = 3) -> Any:
    """Layer x position heatmap of one lens statistic; hover shows each cell's top-``k`` predicted tokens."""
    from ._model import Tokens

    if stat not in LENS_STATS:
        raise ConfigError(f"unknown lens statistic {stat!r}; choose one of {list(LENS_STATS)}")
    b = res.positions.shape[0]
    if not 0 <= prompt < b:
        raise ConfigError(f"prompt {prompt} outside [0, {b})")
    values = {
        "kl": res.kl_to_final,
        "entropy": res.entropy,
        "rank": lambda: res.rank().float(),
        "prob": res.prob,
        "ce": res.cross_entropy,
    }[stat]()[:, prompt]  # [layer, pos]
    pos = res.positions[prompt].tolist()
    toks = Tokens(model)
    if res.tokens is not None:
        x = [f"{p}: {t}" for p, t in zip(pos, toks.names(res.tokens[prompt, pos]))]
    else:
        x = [str(p) for p in pos]
    probs = res.logits[:, prompt].float().softmax(-1)  # [layer, pos, vocab]
    vals, idx = probs.topk(k, dim=-1)
    names = toks.names(idx.flatten())
    hover = []
    for li, label in enumerate(res.labels):
        row = []
        for pi in range(len(pos)):
            base = (li * len(pos) + pi) * k
            tops = ", ".join(f"{escape_text(names[base + j])} {float(vals[li, pi, j]):.2f}" for j in range(k))
            row.append(
                f"{escape_text(label)} @ {escape_text(x[pi])}<br>{escape_text(stat)} {float(values[li, pi]):.3f}<br>{tops}"
            )
        hover.append(row)
    title, scale = LENS_STATS[stat]
    fig = heatmap(values, x=x, y=res.labels, title=f"{res.kind} lens: {title}", xlabel="position: input token",
                  ylabel="layer", zmid=None, colorscale=scale)  # fmt: skip
    fig.update_traces(hovertext=hover, hoverinfo="text")
    return fig


def pair_heatmap(proj: Any, rows: Sequence[int | str] | None = None, cols: Sequence[int | str] | None = None) -> Any:
    """Token-pair heatmap of a projection for chosen row and column tokens (default: the first 20 of each)."""
    vals, rnames, cnames = proj.table(rows, cols)
    return heatmap(vals, x=cnames, y=rnames, title=proj.what, xlabel=proj.col_side, ylabel=proj.row_side)


def top_table(proj: Any, k: int = 10, *, rows: Sequence[int | str] | None = None) -> Any:
    """A table figure: one column per chosen row of the projection, its top-``k`` tokens with values."""
    df = proj.to_dataframe(k, rows=rows)
    columns: dict[str, Sequence[Any]] = {
        str(name): [f"{t} ({v:.2f})" for t, v in zip(sub.token, sub.value)]
        for name, sub in df.groupby("row", sort=False)
    }
    return table(columns, title=f"{proj.what}: top {k} {proj.col_side}s")


def alignment_heatmap(al: Any, kind: str = "all") -> Any:
    """The layer-similarity matrix of an alignment with the Hungarian matching marked."""
    if kind not in al.kernel:
        raise ConfigError(f"no alignment for {kind!r}; have {list(al.kernel)}")
    s = al.kernel[kind]
    la, lb = s.shape
    fig = heatmap(s, x=[f"B.L{j}" for j in range(lb)], y=[f"A.L{i}" for i in range(la)],
                  title=f"layer alignment {al.names[0]} -> {al.names[1]} ({kind}, kernelised)",
                  xlabel=f"{al.names[1]} layer", ylabel=f"{al.names[0]} layer", zmid=None, colorscale="Viridis")  # fmt: skip
    m = al.matching[kind]
    return markers(fig, [f"B.L{j}" for j in m], [f"A.L{i}" for i in range(len(m))], name="Hungarian matching")


def copying_bar(scores: Any) -> Any:
    """Bar chart of a :func:`mechwork.projection.head_scores` table (copying / prev-token / induction per head)."""
    x = [f"L{r.layer}H{r.head}" for r in scores.itertuples()]
    series = {c: scores[c].tolist() for c in ("copying", "prev_token", "induction")}
    return bars(x, series, title="head scores from vocabulary-space circuits", xlabel="head")


__all__ = ["lens_heatmap", "pair_heatmap", "top_table", "alignment_heatmap", "copying_bar"]
