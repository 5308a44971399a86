"""Cross-model parameter alignment through the shared embedding space (Dar et al. 2023, section 5.1; METHODS 4.1).

Two models with the same vocabulary but unrelated residual bases (different seeds, widths) cannot be compared
parameter by parameter. Read every parameter vector in vocabulary space instead: a row ``x`` of a read-side
matrix (an MLP key ``W_in[:, i]``, a row of ``W_Q``/``W_K``/``W_V``) becomes ``W_E x`` (one score per token), a row
of a write-side matrix (an MLP value ``W_out[i]``, a row of ``W_O``) becomes ``x W_U``. The **kernelised
correlation** of two rows is the Pearson correlation of these ``|V|``-long vectors, computed through the
``d x d`` kernels ``E_a^T E_b / |V|`` and the mean embeddings, never building ``|V|``-long vectors:

``corr(x, y) = (x K_ab y^T - (x.m_a)(y.m_b)) / sqrt((x K_aa x^T - (x.m_a)^2)(y K_bb y^T - (y.m_b)^2))``.

Per parameter type and layer pair the mean ``|corr|`` over all row pairs is the similarity (rows are unordered
neurons/head dimensions, so only an aggregate is meaningful); the Hungarian algorithm on it gives the layer
matching. The baseline is the same statistic on the raw rows (Pearson across ``d_model`` features), which only
exists when the widths agree and which a change of residual basis destroys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError
from ._model import embedding, has_lm_head, unembedding

PARAM_TYPES = ("K", "V", "WQ", "WK", "WV", "WO")
_SIDE = {"K": "read", "V": "write", "WQ": "read", "WK": "read", "WV": "read", "WO": "write"}


def param_rows(model: Any, kind: str, layer: int) -> Float[Tensor, "rows d_model"]:
    """The parameter vectors of one type and layer as rows in residual space."""
    if kind not in PARAM_TYPES:
        raise ConfigError(f"unknown parameter type {kind!r}; expected one of {PARAM_TYPES}")
    if kind == "K":
        return model.W_in[layer].detach().T
    if kind == "V":
        return model.W_out[layer].detach()
    if kind == "WO":
        return model.W_O[layer].detach().reshape(-1, int(model.cfg.d_model))
    W = {"WQ": model.W_Q, "WK": model.W_K, "WV": model.W_V}[kind][layer].detach()  # [H, d, E]
    return W.permute(0, 2, 1).reshape(-1, W.shape[1])


def _basis(model: Any, side: str) -> Tensor:
    """``[vocab, d]``: W_E for read-side parameters, the read-out W_U^T for write-side ones."""
    if side == "read" or not has_lm_head(model):
        return embedding(model).double()
    return unembedding(model).T.double()


def _check_vocab(a: Any, b: Any) -> None:
    va, vb = int(a.cfg.d_vocab), int(b.cfg.d_vocab)
    if va != vb:
        raise ConfigError(
            f"models have different vocabularies ({va} vs {vb} tokens): alignment reads both models' parameters "
            "in one shared token space, so it needs the same vocabulary (same tokenizer)"
        )
    ta, tb = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if ta is not None and tb is not None and hasattr(ta, "get_vocab") and ta.get_vocab() != tb.get_vocab():
        raise ConfigError(
            f"models have {va}-token vocabularies that map tokens to different ids (different tokenizers); "
            "alignment needs the same token space"
        )


def kernel_corr(
    xa: Float[Tensor, "na da"], xb: Float[Tensor, "nb db"], Ea: Float[Tensor, "V da"], Eb: Float[Tensor, "V db"]
) -> Float[Tensor, "na nb"]:
    """Pearson correlation over the vocabulary of ``Ea xa_i`` and ``Eb xb_j`` for every row pair (kernelised)."""
    V = Ea.shape[0]
    xa, xb = xa.double(), xb.double()
    Kab, Kaa, Kbb = Ea.T @ Eb / V, Ea.T @ Ea / V, Eb.T @ Eb / V
    ma, mb = xa @ Ea.mean(0), xb @ Eb.mean(0)
    cov = xa @ Kab @ xb.T - ma[:, None] * mb[None, :]
    va = ((xa @ Kaa) * xa).sum(-1) - ma**2
    vb = ((xb @ Kbb) * xb).sum(-1) - mb**2
    return cov / (va.clamp_min(1e-30).sqrt()[:, None] * vb.clamp_min(1e-30).sqrt()[None, :])


def raw_corr(xa: Tensor, xb: Tensor) -> Tensor:
    """Pearson correlation across features of raw parameter rows (the feature-space baseline)."""
    a = xa.double() - xa.double().mean(-1, keepdim=True)
    b = xb.double() - xb.double().mean(-1, keepdim=True)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return a @ b.T


def _hungarian(score: Tensor) -> list[int]:
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(-score.double().cpu().numpy())
    return [int(c) for c in cols]


@dataclass
class Alignment:
    """Layer similarities of two models per parameter type, and the layer matchings they give.

    Attributes
    ----------
    kernel, raw : dict of str -> Float[Tensor, "layer_a layer_b"]
        Mean ``|corr|`` per layer pair (``raw`` is empty when the widths differ). Key ``"all"``: mean over types.
    matching, matching_raw : dict of str -> list of int
        ``matching[t][i]`` = layer of model B matched to layer ``i`` of model A (Hungarian algorithm).
    """

    kernel: dict[str, Tensor]
    raw: dict[str, Tensor]
    matching: dict[str, list[int]] = field(default_factory=dict)
    matching_raw: dict[str, list[int]] = field(default_factory=dict)
    names: tuple[str, str] = ("A", "B")

    def accuracy(self, expected: list[int] | None = None, *, kind: str = "all", raw: bool = False) -> float:
        """Share of model A's layers matched to the ``expected`` layer of B (default: the same index)."""
        m = (self.matching_raw if raw else self.matching).get(kind)
        if m is None:
            raise ConfigError(f"no {'raw ' if raw else ''}matching for {kind!r}; have {sorted(self.matching)}")
        exp = list(range(len(m))) if expected is None else list(expected)
        return sum(int(a == b) for a, b in zip(m, exp)) / len(m)

    def to_dataframe(self) -> Any:
        """One row per parameter type: the matchings and their accuracy against the identity."""
        import pandas as pd

        recs = []
        for k in self.kernel:
            rec = {"param": k, "matching": self.matching[k], "identity_acc": self.accuracy(kind=k)}
            if k in self.matching_raw:
                rec.update(matching_raw=self.matching_raw[k], identity_acc_raw=self.accuracy(kind=k, raw=True))
            recs.append(rec)
        return pd.DataFrame.from_records(recs)

    def plot(self, kind: str = "all") -> Any:
        from .plots import alignment_heatmap

        return alignment_heatmap(self, kind)

    def __repr__(self) -> str:
        m = self.matching.get("all")
        return f"Alignment({self.names[0]} -> {self.names[1]}, layer matching {m}, types {list(self.kernel)})"

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        facts = {"models": f"{self.names[0]} -> {self.names[1]}", "layer matching (all)": self.matching.get("all")}
        if "all" in self.matching_raw:
            facts["raw-parameter matching"] = self.matching_raw["all"]
        rows = [[k, self.matching[k], self.matching_raw.get(k, "-")] for k in self.kernel]
        return card("Alignment", facts, table=(["parameter", "kernelised", "raw"], rows))


@torch.no_grad()
def align(model_a: Any, model_b: Any, *, params: tuple[str, ...] | None = None, reduce: str = "mean") -> Alignment:
    """Align the layers of two models with the same vocabulary through the embedding space.

    Parameters
    ----------
    model_a, model_b : HookedTransformer or TransformerBridge
        Same vocabulary; depth and width may differ (``d_model`` must agree only for the raw baseline).
    params : tuple of str, optional
        Parameter types among ``K`` (MLP keys), ``V`` (MLP values), ``WQ``, ``WK``, ``WV``, ``WO``; default: every
        type both models have (no ``K``/``V`` for attention-only models).

    reduce : {"mean", "max"}
        Aggregate of ``|corr|`` over the row pairs of a layer pair: the mean over all pairs (Dar et al.), or the mean
        over A's rows of their best match in B (sharper when few rows have a counterpart).

    Returns
    -------
    Alignment
        ``.kernel[t]`` / ``.raw[t]`` similarity matrices, ``.matching[t]`` / ``.matching_raw[t]``, ``.accuracy()``.

    Raises
    ------
    ConfigError
        Different vocabularies; an unknown parameter type.
    """
    _check_vocab(model_a, model_b)
    if reduce not in ("mean", "max"):
        raise ConfigError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    agg = (lambda c: c.abs().mean()) if reduce == "mean" else (lambda c: c.abs().amax(1).mean())
    mlp = not (getattr(model_a.cfg, "attn_only", False) or getattr(model_b.cfg, "attn_only", False))
    params = tuple(params) if params else tuple(p for p in PARAM_TYPES if mlp or p not in ("K", "V"))
    for p in params:
        if p not in PARAM_TYPES:
            raise ConfigError(f"unknown parameter type {p!r}; expected some of {PARAM_TYPES}")
        if p in ("K", "V") and not mlp:
            raise ConfigError(f"parameter type {p!r} needs MLPs; one of the models is attention-only")
    La, Lb = int(model_a.cfg.n_layers), int(model_b.cfg.n_layers)
    same_width = int(model_a.cfg.d_model) == int(model_b.cfg.d_model)
    kernel, raw = {}, {}
    for p in params:
        Ea, Eb = _basis(model_a, _SIDE[p]), _basis(model_b, _SIDE[p])
        ka, kb = torch.zeros(La, Lb, dtype=torch.float64), torch.zeros(La, Lb, dtype=torch.float64)
        rows_b = [param_rows(model_b, p, j).to(Eb.device) for j in range(Lb)]
        for i in range(La):
            xa = param_rows(model_a, p, i).to(Ea.device)
            for j in range(Lb):
                ka[i, j] = agg(kernel_corr(xa, rows_b[j], Ea, Eb))
                if same_width:
                    kb[i, j] = agg(raw_corr(xa, rows_b[j].to(xa.device)))
        kernel[p] = ka
        if same_width:
            raw[p] = kb
    kernel["all"] = torch.stack([_z(kernel[p]) for p in params]).mean(0)
    if same_width:
        raw["all"] = torch.stack([_z(raw[p]) for p in params]).mean(0)
    names = (str(getattr(model_a, "mechwork_spec", "A")), str(getattr(model_b, "mechwork_spec", "B")))
    return Alignment(
        kernel,
        raw,
        {k: _hungarian(v) for k, v in kernel.items()},
        {k: _hungarian(v) for k, v in raw.items()},
        names,
    )


def _z(s: Tensor) -> Tensor:
    """Standardise a similarity matrix so parameter types with different correlation scales weigh the same."""
    return (s - s.mean()) / s.std().clamp_min(1e-12)


@torch.no_grad()
def permuted_copy(model: Any, order: list[int], *, rotate: bool = True, seed: int = 0) -> Any:
    """A copy of a (processed) HookedTransformer with its blocks reordered (block ``i`` of the copy is block
    ``order[i]`` of the original) and, with ``rotate``, its residual basis turned by a random orthogonal ``Q`` that
    fixes the all-ones direction (so LayerNorm's centring commutes with it). A known answer for :func:`align`:
    the raw parameters no longer correspond, their vocabulary-space readings do exactly.
    """
    if type(model).__name__ != "HookedTransformer":
        raise ConfigError("permuted_copy needs a HookedTransformer (load the model with backend='hooked')")
    n_layers = int(model.cfg.n_layers)
    if sorted(order) != list(range(n_layers)):
        raise ConfigError(f"order must be a permutation of range({n_layers}), got {order}")
    if any(getattr(b, "ln1", None) is not None and hasattr(b.ln1, "w") for b in model.blocks) and rotate:
        raise ConfigError("rotate=True needs folded LayerNorms (load the model with processing=True)")
    out = copy.deepcopy(model)
    out.blocks = torch.nn.ModuleList([copy.deepcopy(model.blocks[i]) for i in order])
    blocks: list[Any] = list(out.blocks)
    for i, b in enumerate(blocks):
        b.layer_id = i
    if rotate:
        d = int(model.cfg.d_model)
        g = torch.Generator().manual_seed(seed)
        u = torch.full((d, 1), d**-0.5)
        basis, _ = torch.linalg.qr(torch.cat([u, torch.randn(d, d - 1, generator=g)], 1))
        B = basis[:, 1:]
        R, _ = torch.linalg.qr(torch.randn(d - 1, d - 1, generator=g))
        Q = (u @ u.T + B @ R @ B.T).to(model.W_E)
        out.embed.W_E.copy_(out.embed.W_E @ Q)
        out.pos_embed.W_pos.copy_(out.pos_embed.W_pos @ Q)
        out.unembed.W_U.copy_(Q.T @ out.unembed.W_U)
        for b in blocks:
            for w in (b.attn.W_Q, b.attn.W_K, b.attn.W_V):
                w.copy_(torch.einsum("de,hdk->hek", Q, w))
            b.attn.W_O.copy_(b.attn.W_O @ Q)
            b.attn.b_O.copy_(b.attn.b_O @ Q)
            if hasattr(b, "mlp"):
                b.mlp.W_in.copy_(Q.T @ b.mlp.W_in)
                b.mlp.W_out.copy_(b.mlp.W_out @ Q)
                b.mlp.b_out.copy_(b.mlp.b_out @ Q)
    out.setup()  # renames every hook point after its new block index
    return out
