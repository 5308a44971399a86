"""Fine-tuning vectors in vocabulary space (Dar et al. 2023, section 4.3): the difference between two checkpoints
of the same architecture, projected per parameter type, says which tokens the fine-tune made each component promote.

For every layer ``l``:

- ``L{l}.mlp``: the MLP value change ``sum_i (W_out'[l][i] - W_out[l][i]) + (b_out' - b_out)`` read through the base
  model's ``W_U`` (what the layer writes more of when its neurons fire; the sum treats every neuron as firing at 1,
  per-neuron readings are :meth:`FinetuneVectors.neurons`);
- ``L{l}.attn``: the OV change for the mean source token, ``mean_t(W_E)[t] (W_V'W_O' - W_V W_O) W_U`` plus
  ``(b_O' - b_O) W_U`` (what the layer's heads write more of, whatever they attend to);
- ``L{l}.mlp_keys``: the MLP key change read through the base ``W_E``, summed over neurons,
  ``W_E sum_i (W_in'[l][:, i] - W_in[l][:, i])`` (which tokens now drive the layer's neurons more);
- ``embed``: how far each token's embedding grew along itself, ``(W_E' - W_E)[t] . W_E[t] / |W_E[t]|``;
- ``unembed``: how far each token's read-out column grew along itself, ``(W_U' - W_U)[:, t] . W_U[:, t] / |W_U[:, t]|``
  (the token is predicted more strongly wherever the base model already leaned to it).

Scores are comparable within a component, not across components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.errors import ConfigError
from ._model import Tokens, embedding, unembedding
from .weights import Projection, project


def _check_same_architecture(a: Any, b: Any) -> None:
    keys = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "attn_only")
    diff = {k: (getattr(a.cfg, k, None), getattr(b.cfg, k, None)) for k in keys}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        raise ConfigError(f"fine-tuning vectors need two checkpoints of one architecture; they differ in {diff}")


@dataclass
class FinetuneVectors:
    """Per-component token scores of a fine-tune (``scores[name]`` is ``[vocab]``: how much more it promotes)."""

    scores: dict[str, Float[Tensor, " vocab"]]
    deltas: dict[str, Tensor]
    tokens: Tokens
    base: Any

    def top(self, component: str, k: int = 10, *, largest: bool = True) -> list[tuple[str, float]]:
        v = self._get(component)
        vals, idx = v.topk(min(k, v.numel()), largest=largest)
        return list(zip(self.tokens.names(idx), vals.tolist()))

    def _get(self, component: str) -> Tensor:
        if component not in self.scores:
            raise ConfigError(f"no component {component!r}; components: {list(self.scores)}")
        return self.scores[component]

    def rank(self, component: str) -> Tensor:
        """Rank of every token (0 = promoted most) in one component."""
        v = self._get(component)
        order = v.argsort(descending=True)
        r = torch.empty_like(order)
        r[order] = torch.arange(v.numel(), device=v.device)
        return r

    def neurons(self, layer: int) -> Projection:
        """Each neuron's value change of MLP ``layer`` as a row read in vocabulary space."""
        key = f"L{layer}.mlp"
        if key not in self.deltas:
            raise ConfigError(f"no MLP delta for layer {layer}; components: {list(self.deltas)}")
        d = self.deltas[key]
        return project(self.base, d, labels=[f"L{layer}N{i}" for i in range(d.shape[0])])

    def to_dataframe(self, k: int = 10) -> Any:
        import pandas as pd

        recs = [
            {"component": c, "rank": r, "token": t, "score": s}
            for c in self.scores
            for r, (t, s) in enumerate(self.top(c, k), 1)
        ]
        return pd.DataFrame.from_records(recs)

    def __repr__(self) -> str:
        return f"FinetuneVectors({len(self.scores)} components: {', '.join(self.scores)})"

    def _repr_html_(self) -> str:
        from ..viz.cards import card

        rows = [[c, ", ".join(t for t, _ in self.top(c, 5))] for c in self.scores]
        return card("Fine-tuning vectors", {"components": len(self.scores)}, table=(["component", "top tokens"], rows))


@torch.no_grad()
def finetune_vectors(base: Any, tuned: Any, *, output: str = "unembed") -> FinetuneVectors:
    """Project ``tuned - base`` per parameter type into the base model's vocabulary space.

    Parameters
    ----------
    base, tuned : HookedTransformer or TransformerBridge
        Two checkpoints of one architecture, loaded the same way (both processed or both not).
    output : {"unembed", "embed"}
        Read-out of written directions (see :func:`mechwork.projection.project`).

    Returns
    -------
    FinetuneVectors
        ``.scores`` per component (``L{l}.attn``, ``L{l}.mlp``, ``L{l}.mlp_keys``, ``embed``, ``unembed``), ``.top(component, k)``,
        ``.rank(component)``, ``.neurons(layer)``.
    """
    _check_same_architecture(base, tuned)
    U = unembedding(base, output=output)
    E = embedding(base)
    mean_e = E.mean(0)
    scores: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}
    for la in range(int(base.cfg.n_layers)):
        dov = torch.einsum("hde,hef->df", tuned.W_V[la], tuned.W_O[la]) - torch.einsum(
            "hde,hef->df", base.W_V[la], base.W_O[la]
        )
        write = mean_e @ dov + (tuned.b_O[la] - base.b_O[la])
        scores[f"L{la}.attn"] = (write @ U).float()
        if not getattr(base.cfg, "attn_only", False):
            d = (tuned.W_out[la] - base.W_out[la]).detach()
            deltas[f"L{la}.mlp"] = d
            scores[f"L{la}.mlp"] = ((d.sum(0) + tuned.b_out[la] - base.b_out[la]) @ U).float()
            scores[f"L{la}.mlp_keys"] = (E @ (tuned.W_in[la] - base.W_in[la]).detach().sum(1)).float()
    dE = tuned.W_E.detach() - E
    scores["embed"] = ((dE * E).sum(1) / E.norm(dim=1).clamp_min(1e-12)).float()
    W_U = base.W_U.detach()
    dU = tuned.W_U.detach() - W_U
    scores["unembed"] = ((dU * W_U).sum(0) / W_U.norm(dim=0).clamp_min(1e-12)).float()
    return FinetuneVectors(scores, deltas, Tokens(base), base)
