"""Weights projected into vocabulary space (Dar, Geva, Gupta & Berant; METHODS 4.1-4.2), never materialising
``|V| x |V|``.

``project(model, what, ...)`` returns a :class:`Projection`: the product ``left @ right`` of two low-rank factors
(``[rows, r] @ [r, vocab]``), read chunk by chunk. Kinds:

============  ===========================================  ===============================================
``ov``        ``W_E W_V W_O W_U`` (rank <= d_head)          source token -> promoted output token
``qk``        ``(W_E W_Q + b_Q)(W_E W_K + b_K)^T``          query token x key token (unscaled scores)
``neuron_out`` ``W_out[n] W_U``                             tokens an MLP neuron's value promotes
``neuron_in``  ``W_E W_in[:, n]``                            tokens whose embedding drives the neuron (its key)
``embed``     ``W_E W_U``                                   the direct path: token -> predicted next token
``unembed``   ``W_U^T W_U``                                 output-token similarity of the read-out
direction     a tensor of a site's width, ``site=...``       see :func:`project`
============  ===========================================  ===============================================

Conventions for tied/untied models, the final LayerNorm and biases: :mod:`mechwork.projection._model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError, ShapeError
from ._model import Tokens, check_head, check_layer, check_neuron, check_width, embedding, input_embedding, unembedding

KINDS = ("ov", "qk", "neuron_out", "neuron_in", "embed", "unembed", "direction")
DENSE_LIMIT = 2**26  # entries a .matrix call may materialise (256 MiB of fp32)
CHUNK_BYTES = 2**26


@dataclass
class Projection:
    """A ``[rows, cols]`` matrix over the vocabulary held as ``left @ right`` (never built in full).

    Attributes
    ----------
    what : str
        e.g. ``"ov L1H0"``, ``"neuron_out L2N17"``, ``"direction resid_post.2 (write)"``.
    left, right : Tensor
        ``[rows, r]`` and ``[r, cols]`` factors.
    row_labels : list of str or None
        Names of non-token rows (neurons, directions); ``None`` when rows are tokens.
    row_side, col_side : str
        What rows and columns index (``"source token"``, ``"promoted token"``, ``"query token"``, ...).
    """

    what: str
    left: Float[Tensor, "rows r"]
    right: Float[Tensor, "r cols"]
    row_labels: list[str] | None
    row_side: str
    col_side: str
    tokens: Tokens

    # ------------------------------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        return int(self.left.shape[0]), int(self.right.shape[1])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def _chunk(self) -> int:
        """Rows computed at once (at most CHUNK_BYTES of fp32 per block)."""
        return max(1, min(self.shape[0], CHUNK_BYTES // (4 * self.shape[1])))

    def _rows(self) -> Any:
        step = self._chunk()
        for s in range(0, self.shape[0], step):
            yield s, (self.left[s : s + step] @ self.right).float()

    @property
    def matrix(self) -> Float[Tensor, "rows cols"]:
        """The dense matrix, only when small (a ``|V| x |V|`` of a real vocabulary does not fit: use the tables)."""
        r, c = self.shape
        if r * c > DENSE_LIMIT:
            raise ShapeError(
                f"{self.what} is {r} x {c} ({r * c * 4 / 2**30:.1f} GiB in fp32); read it with top(), top_rows(), "
                "top_pairs(), table() or row() instead of materialising it"
            )
        return (self.left @ self.right).float()

    def _row_index(self, row: int | str | None) -> int:
        if row is None:
            return 0
        if self.row_labels is None:
            return self.tokens.id(row)
        if isinstance(row, str):
            if row not in self.row_labels:
                raise ConfigError(f"no row {row!r}; rows are {self.row_labels[:10]}")
            return self.row_labels.index(row)
        if not 0 <= row < self.shape[0]:
            raise ConfigError(f"row {row} outside [0, {self.shape[0]})")
        return row

    def row(self, row: int | str | None = None) -> Float[Tensor, " cols"]:
        """One row (a token id or string for token rows; an index or label otherwise)."""
        i = self._row_index(row)
        return (self.left[i] @ self.right).float()

    def row_names(self, idx: Sequence[int]) -> list[str]:
        return self.tokens.names(idx) if self.row_labels is None else [self.row_labels[i] for i in idx]

    # ------------------------------------------------------------------------------------------ tables
    def top(self, k: int = 10, *, row: int | str | None = None, largest: bool = True) -> list[tuple[str, float]]:
        """Top-``k`` (column token, value) of one row (default: the first / only row)."""
        vec = self.row(row)
        vals, idx = vec.topk(min(k, vec.numel()), largest=largest)
        return list(zip(self.tokens.names(idx), vals.tolist()))

    def top_rows(self, k: int = 10, *, largest: bool = True) -> tuple[Tensor, Tensor]:
        """Top-``k`` values and column ids of every row, ``([rows, k], [rows, k])``, computed chunk by chunk."""
        k = min(k, self.shape[1])
        vals, ids = [], []
        for _, block in self._rows():
            v, i = block.topk(k, dim=-1, largest=largest)
            vals.append(v)
            ids.append(i)
        return torch.cat(vals), torch.cat(ids)

    def top_pairs(self, k: int = 10, *, largest: bool = True) -> list[tuple[str, str, float]]:
        """The ``k`` largest (or smallest) entries as (row name, column token, value)."""
        best_v = torch.empty(0)
        best_i = torch.empty(0, dtype=torch.long)
        cols = self.shape[1]
        for s, block in self._rows():
            # the chunk's k best entries are among its rows' k best: a row-wise top-k first is much cheaper
            rv, ri = block.topk(min(k, cols), dim=-1, largest=largest)
            v, j = rv.flatten().topk(min(k, rv.numel()), largest=largest)
            rows_of = j // rv.shape[1] + s
            best_v = torch.cat([best_v, v.cpu()])
            best_i = torch.cat([best_i, (rows_of * cols + ri.flatten()[j]).cpu()])
            order = best_v.topk(min(k, best_v.numel()), largest=largest).indices
            best_v, best_i = best_v[order], best_i[order]
        rows = self.row_names((best_i // cols).tolist())
        return list(zip(rows, self.tokens.names((best_i % cols).tolist()), best_v.tolist()))

    def table(
        self, rows: Sequence[int | str] | None = None, cols: Sequence[int | str] | None = None
    ) -> tuple[Float[Tensor, "r c"], list[str], list[str]]:
        """The sub-matrix for chosen row and column tokens: ``(values, row names, column names)``."""
        if rows is None:
            r_idx = list(range(min(self.shape[0], 20)))
        else:
            r_idx = self.tokens.ids(rows) if self.row_labels is None else [self._row_index(r) for r in rows]
        c_idx = self.tokens.ids(cols) if cols is not None else list(range(min(self.shape[1], 20)))
        vals = (self.left[r_idx] @ self.right[:, c_idx]).float()
        return vals, self.row_names(r_idx), self.tokens.names(c_idx)

    def diagonal_score(self) -> float:
        """Share of token rows whose largest entry is their own token (a copying OV circuit scores near 1)."""
        if self.row_labels is not None or self.shape[0] != self.shape[1]:
            raise ShapeError("diagonal_score needs a square token x token projection (ov, qk, embed)")
        hits = 0
        for s, block in self._rows():
            hits += int((block.argmax(-1).cpu() == torch.arange(s, s + block.shape[0])).sum())
        return hits / self.shape[0]

    def to_dataframe(self, k: int = 10, *, rows: Sequence[int | str] | None = None) -> Any:
        """A long table ``row, rank, token, value`` of each chosen row's top-``k`` (default: every non-token row,
        or the first 20 token rows)."""
        import pandas as pd

        if rows is None:
            idx = list(range(self.shape[0] if self.row_labels is not None else min(self.shape[0], 20)))
        else:
            idx = [self._row_index(r) for r in rows]
        names = self.row_names(idx)
        recs = []
        for i, name in zip(idx, names):
            for rank, (tok, v) in enumerate(self.top(k, row=i if self.row_labels is not None else i), 1):
                recs.append({"row": name, "rank": rank, "token": tok, "value": v})
        return pd.DataFrame.from_records(recs)

    def plot(self, rows: Sequence[int | str] | None = None, cols: Sequence[int | str] | None = None) -> Any:
        """Token-pair heatmap of :meth:`table` (plotly; labels escaped)."""
        from .plots import pair_heatmap

        return pair_heatmap(self, rows, cols)

    def __repr__(self) -> str:
        r, c = self.shape
        return f"Projection({self.what!r}, {r} x {c} {self.row_side} -> {self.col_side}, rank <= {self.rank})"

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        r, c = self.shape
        first = "first row" if self.row_labels is None else self.row_labels[0]
        facts = {"shape": f"{r} x {c} ({self.row_side} -> {self.col_side})", "rank": f"<= {self.rank}"}
        return card(f"Projection {self.what}", facts, table=([f"top of {first}", "value"], self.top(5)))


# ---------------------------------------------------------------------------------------------- builders
def _direction_factors(
    model: Any, vec: Tensor, site_name: str | None, mode: str, output: str
) -> tuple[Tensor, Tensor, str, str]:
    """Factors of a direction (rows of ``vec``) read in vocabulary space at a site; returns left, right, sides."""
    from ..core.sites import site as resolve_site

    d_model = int(model.cfg.d_model)
    if site_name is None:
        kind, layer, width = "resid_post", None, d_model
        label = "residual"
    else:
        s = resolve_site(model, site_name)
        kind, layer, width = s.kind, s.layer, s.d
        label = s.alias
    if mode not in ("write", "read"):
        raise ConfigError(
            f"mode must be 'write' (what the direction promotes) or 'read' (what drives it), got {mode!r}"
        )
    if width is None:
        raise ConfigError(f"site {label} has no fixed width (attention patterns cannot be projected)")
    vec = check_width(vec, width, f"direction for site {label}")
    vec = vec.to(model.W_U if output == "unembed" else model.W_E)
    resid_kinds = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "embed", "pos_embed")
    resid_kinds += ("ln1_normalized", "ln2_normalized", "ln_final_normalized")
    if kind in resid_kinds:
        if mode == "write":
            return vec, unembedding(model, output=output), "direction", "promoted token"
        return embedding(model), vec.T, "token", "direction"
    if kind in ("mlp_post", "mlp_pre"):
        if mode == "write":
            return vec @ model.W_out[layer].detach(), unembedding(model, output=output), "direction", "promoted token"
        return embedding(model) @ model.W_in[layer].detach(), vec.T, "token", "direction"
    if kind in ("z", "result") and mode == "write":
        n_heads = int(model.cfg.n_heads)
        if kind == "z":
            v = vec.reshape(vec.shape[0], n_heads, -1)
            out = torch.einsum("nhe,hed->nd", v, model.W_O[layer].detach())
        else:
            out = vec.reshape(vec.shape[0], n_heads, -1).sum(1)
        return out, unembedding(model, output=output), "direction", "promoted token"
    if kind in ("q", "k", "v") and mode == "read":
        W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[kind][layer].detach()  # [H, d, E]
        v = vec.reshape(vec.shape[0], W.shape[0], -1)
        key = torch.einsum("hde,nhe->dn", W, v)
        return embedding(model), key, "token", "direction"
    raise ConfigError(
        f"cannot project a {mode}-direction at site {label} (kind {kind}). Supported: residual-width sites "
        "(resid_*, attn_out, mlp_out, embed; write or read), mlp_post/mlp_pre (write through W_out, read through "
        "W_in), z/result (write through W_O), q/k/v (read through W_Q/W_K/W_V)"
    )


@torch.no_grad()
def project(
    model: Any,
    what: str | Tensor,
    *,
    layer: int | None = None,
    head: int | None = None,
    neuron: int | None = None,
    site: str | None = None,
    mode: str = "write",
    output: str = "unembed",
    input: str = "embed",
    labels: Sequence[str] | None = None,
) -> Projection:
    """Project weights (or directions) into vocabulary space, as a factored :class:`Projection`.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    what : {"ov", "qk", "neuron_out", "neuron_in", "embed", "unembed"} or Tensor
        A tensor ``[width]`` or ``[n, width]`` is a direction (SAE decoder / encoder rows, a steering vector, an
        eraser direction, ...) in the space of ``site``.
    layer, head, neuron : int
        The component (``ov``/``qk`` need ``layer`` and ``head``; neurons need ``layer`` and ``neuron``).
    site : str, optional
        Where a direction lives (default: the residual stream). Residual-width sites are read through ``W_U``
        (``mode="write"``: the tokens it promotes) or ``W_E`` (``mode="read"``: the tokens whose embedding points
        along it, e.g. an SAE encoder row); ``mlp_post``/``mlp_pre`` directions go through ``W_out`` (write) or
        ``W_in`` (read); ``z``/``result`` through ``W_O`` (write); ``q``/``k``/``v`` through ``W_Q``/``W_K``/``W_V``
        (read).
    mode : {"write", "read"}
    output : {"unembed", "embed"}
        Read outputs through ``W_U`` (default) or through ``W_E^T`` (tied convention; the only choice on a model
        without an LM head).
    input : {"embed", "effective"}
        Input side of ``ov``, ``qk`` and ``neuron_in``: ``W_E`` (default; Dar et al.) or the context-free effective
        embedding at the component's layer (each token's residual entering that block after BOS, LayerNorm-scaled;
        see :func:`mechwork.projection._model.effective_embedding`), which later layers actually read.
    labels : list of str, optional
        Names of the direction rows (default ``dir0``, ``dir1``, ...).

    Returns
    -------
    Projection
        ``ov``: source x promoted token; ``qk``: query x key token; ``neuron_out``/``neuron_in``: one row over the
        vocabulary; directions: one row per direction (write) or token x direction (read).

    Raises
    ------
    ConfigError
        Unknown kind, index out of range, a headless model where ``W_U`` is needed, an unsupported site.
    ShapeError
        A direction of the wrong width.
    """
    toks = Tokens(model)
    if isinstance(what, Tensor):
        left, right, rs, cs = _direction_factors(model, what, site, mode, output)
        where = site or "residual"
        if rs == "direction":
            names = list(labels) if labels is not None else [f"dir{i}" for i in range(left.shape[0])]
            if len(names) != left.shape[0]:
                raise ShapeError(f"{len(names)} labels for {left.shape[0]} directions")
            return Projection(f"direction {where} (write)", left, right, names, rs, cs, toks)
        # read mode: rows are tokens, columns directions; store transposed so rows are directions over tokens
        names = list(labels) if labels is not None else [f"dir{i}" for i in range(right.shape[1])]
        return Projection(f"direction {where} (read)", right.T, left.T, names, "direction", "driving token", toks)
    if not isinstance(what, str) or what not in KINDS[:-1]:
        raise ConfigError(f"unknown projection {what!r}; expected one of {KINDS[:-1]} or a direction tensor")
    if what in ("ov", "qk"):
        layer, head = check_head(model, layer, head, f"projection {what!r}")
        W_E = input_embedding(model, layer, input)
        if what == "ov":
            left = W_E @ model.W_V[layer, head].detach()
            right = model.W_O[layer, head].detach() @ unembedding(model, output=output)
            return Projection(f"ov L{layer}H{head}", left, right, None, "source token", "promoted token", toks)
        q = W_E @ model.W_Q[layer, head].detach() + _bias(model, "b_Q", layer, head)
        k = W_E @ model.W_K[layer, head].detach() + _bias(model, "b_K", layer, head)
        return Projection(f"qk L{layer}H{head}", q, k.T, None, "query token", "key token", toks)
    if what == "embed":
        return Projection("embed (direct path)", embedding(model), unembedding(model, output=output), None,
                          "input token", "predicted token", toks)  # fmt: skip
    if what == "unembed":
        U = unembedding(model, output=output)
        return Projection("unembed similarity", U.T, U, None, "output token", "output token", toks)
    layer, neuron = check_neuron(model, layer, neuron, f"projection {what!r}")
    if what == "neuron_out":
        left = model.W_out[layer][neuron].detach()[None]
        return Projection(f"neuron_out L{layer}N{neuron}", left, unembedding(model, output=output),
                          [f"L{layer}N{neuron}"], "neuron value", "promoted token", toks)  # fmt: skip
    key = input_embedding(model, layer, input) @ model.W_in[layer][:, neuron].detach()
    return Projection(f"neuron_in L{layer}N{neuron}", torch.ones(1, 1, dtype=key.dtype, device=key.device),
                      key[None], [f"L{layer}N{neuron}"], "neuron key", "driving token", toks)  # fmt: skip


def _bias(model: Any, name: str, layer: int, head: int) -> Tensor | float:
    b = getattr(model, name, None)
    return b[layer, head].detach() if isinstance(b, Tensor) else 0.0


def layer_heads(model: Any, layer: int | None) -> list[tuple[int, int]]:
    """Every (layer, head) of one layer (or of the model when ``layer`` is None)."""
    layers = range(int(model.cfg.n_layers)) if layer is None else [check_layer(model, layer, "heads")]
    return [(la, h) for la in layers for h in range(int(model.cfg.n_heads))]
