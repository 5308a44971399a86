"""The edge graph of a transformer: who writes into the residual stream (senders) and who reads it (receivers),
and forward hooks that add a tensor to any receiver's input.

Senders (METHODS.md 5.3): the input embedding (token + position embeddings), every attention head's output
(``z @ W_O``, per head) and every MLP's output. Receivers: the query, key and value inputs of every head
(three nodes per head, as ``use_split_qkv_input``), every MLP's input and the final residual stream (the
logits). A sender feeds every receiver downstream of it; an edge's contribution to a receiver's input is the
sender's output, because in a pre-LN transformer a block's input is the plain sum of the outputs before it.

Receiver inputs on the two backends:

- ``HookedTransformer``: ``hook_{q,k,v}_input`` (``use_split_qkv_input``), ``hook_mlp_in`` (``use_hook_mlp_in``),
  ``blocks.{N-1}.hook_resid_post``; the flags are switched on for the call and restored afterwards.
- ``TransformerBridge`` (TransformerLens 3.9): ``set_use_split_qkv_input`` is refused for models whose attention
  is a plain ``AttentionBridge`` (all native and GPT-2-style bridges: "No hook point is available before the
  Q/K/V projections"). The per-head inputs are *emulated*: at ``attn.hook_q/k/v`` the projection of head ``h``
  is recomputed from ``ln1(resid_pre + add_h)`` with the block's own ``ln1`` and ``W_Q/W_K/W_V``, so the
  residual stream a head's query reads can differ per head. Every call checks on the clean run that the
  recomputation reproduces the model's own q/k/v (to 1e-4 relative); a backend where it does not (e.g. a
  rotary model whose bridge hooks q after the rotation) is refused with a message naming the site.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import SiteError, UnsupportedModelError
from ..core.kind import model_kind
from ..core.sites import is_bridge

QKV = ("q", "k", "v")
Slot = tuple[int, str]  # (layer, "q"|"k"|"v"|"mlp"|"logits")


@dataclass(frozen=True)
class Sender:
    """A component writing into the residual stream: ``input``, ``a{L}.h{H}``, ``m{L}``."""

    id: str
    kind: str  # "input", "head", "mlp"
    layer: int  # -1 for the input
    head: int | None = None


@dataclass(frozen=True)
class Receiver:
    """One input of a component: head ``a{L}.h{H}`` via q/k/v, MLP ``m{L}``, or the logits."""

    node: str
    kind: str  # "q", "k", "v", "mlp", "logits"
    layer: int  # n_layers for the logits
    head: int | None = None

    @property
    def slot(self) -> Slot:
        return (self.layer, self.kind)

    @property
    def name(self) -> str:
        return f"{self.node}<{self.kind}>" if self.kind in QKV else self.node


def head_id(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def check_model(model: Any) -> None:
    """Refuse models circuits cannot be computed on (encoders without an LM head, post-LN blocks)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "hook_dict"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a TransformerLens model; load it with mechwork.load_model"
        )
    arch = str(getattr(cfg, "original_architecture", "") or "")
    spec = str(getattr(model, "mechwork_spec", "") or "")
    kind = model_kind(model)
    if not kind.causal or not kind.lm_head or "Bert" in arch:
        raise UnsupportedModelError(
            f"{spec or type(model).__name__} is {'an encoder' if not kind.causal else 'a model'} "
            f"({arch or 'no LM head'}) without a trained language-model head: circuits attribute a metric of "
            "next-token logits, which this model does not have (mechwork does not invent one). Use a causal LM "
            "such as toy-mixed or a local GPT-2 / Pythia / LLaMA folder."
        )
    if getattr(cfg, "n_layers", 0) < 1:
        raise UnsupportedModelError("the model has no layers")


class Structure:
    """Senders, receivers and valid edges of ``model``, plus the hooks that read and write them."""

    def __init__(self, model: Any) -> None:
        check_model(model)
        cfg = model.cfg
        self.model = model
        self.bridge = is_bridge(model)
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.attn_only = bool(getattr(cfg, "attn_only", False))
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        names = set(model.hook_dict)
        self.pos_embed = "hook_pos_embed" in names and getattr(cfg, "positional_embedding_type", "standard") in (
            "standard",
            "shortformer",
        )
        self.n_kv = int(model.blocks[0].attn.W_K.shape[0])
        s: list[Sender] = [Sender("input", "input", -1)]
        r: list[Receiver] = []
        for L in range(self.n_layers):
            for kind in QKV:
                heads = self.n_heads if kind == "q" else self.n_kv
                r += [Receiver(head_id(L, h), kind, L, h) for h in range(heads)]
            s += [Sender(head_id(L, h), "head", L, h) for h in range(self.n_heads)]
            if not self.attn_only:
                r.append(Receiver(f"m{L}", "mlp", L))
                s.append(Sender(f"m{L}", "mlp", L))
        r.append(Receiver("logits", "logits", self.n_layers))
        self.senders, self.receivers = s, r
        self.valid = torch.zeros(len(r), len(s), dtype=torch.bool)
        for i, rec in enumerate(r):
            for j, snd in enumerate(s):
                self.valid[i, j] = snd.layer < rec.layer or (
                    snd.layer == rec.layer and snd.kind == "head" and rec.kind == "mlp" and not self.parallel
                )
        self.slots: dict[Slot, list[int]] = {}
        for i, rec in enumerate(r):
            self.slots.setdefault(rec.slot, []).append(i)
        self.capture_names = ["hook_embed"] + (["hook_pos_embed"] if self.pos_embed else [])
        for L in range(self.n_layers):
            self.capture_names.append(f"blocks.{L}.attn.hook_z")
            if not self.attn_only:
                self.capture_names.append(f"blocks.{L}.hook_mlp_out")
        missing = [n for n in self.capture_names if n not in names]
        if missing:
            raise SiteError(f"the model lacks hook points {missing} that edge attribution reads")

    # --- senders --------------------------------------------------------------------------------------
    def sender_outputs(self, acts: dict[str, Tensor], n: int | None = None) -> Tensor:
        """``[senders, batch, pos, d_model]`` from captured activations: all senders, or the first ``n``
        (senders are ordered input, heads of layer 0, MLP 0, heads of layer 1, ...)."""
        n = len(self.senders) if n is None else n
        out = [acts["hook_embed"] + (acts["hook_pos_embed"] if self.pos_embed else 0)]
        for L in range(self.n_layers):
            if len(out) >= n:
                break
            z = acts[f"blocks.{L}.attn.hook_z"]
            W_O = self.model.blocks[L].attn.W_O.detach().to(z.dtype)
            out += list(torch.einsum("bphe,hed->hbpd", z, W_O).unbind(0))
            if not self.attn_only and len(out) < n:
                out.append(acts[f"blocks.{L}.hook_mlp_out"])
        return torch.stack(out[:n])

    def n_inputs(self, slot: Slot) -> int:
        """How many senders (a prefix of :attr:`senders`) feed the receivers of ``slot``."""
        return int(self.valid[self.slots[slot][0]].sum())

    def receiver_heads(self, slot: Slot) -> int:
        kind = slot[1]
        return self.n_heads if kind == "q" else self.n_kv if kind in QKV else 1

    # --- receivers ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def flags(self) -> Iterator[None]:
        """Switch on the hooks receivers need on HookedTransformer (restored on exit)."""
        cfg = self.model.cfg
        saved = {}
        wanted = [] if self.bridge else ["use_split_qkv_input"]
        if not self.attn_only:
            wanted.append("use_hook_mlp_in")
        try:
            for flag in wanted:
                saved[flag] = bool(getattr(cfg, flag, False))
                if not saved[flag]:
                    getattr(self.model, f"set_{flag}")(True)
            yield
        finally:
            for flag, value in saved.items():
                if not value:
                    getattr(self.model, f"set_{flag}")(False)

    def hooks(self, provide: Callable[[Slot, Tensor], Tensor | None], *, check: bool = False) -> list[tuple[str, Any]]:
        """Forward hooks adding ``provide(slot, act)`` (or nothing when it returns None) to each receiver input.

        The added tensor is ``[rows, pos, heads, d_model]`` for q/k/v slots and ``[rows, pos, d_model]`` for
        MLP and logits slots, ``pos`` matching the hooked activation (a suffix on resumed forwards).
        ``check``: on the bridge, verify the emulated q/k/v equal the model's own (first call of a run).
        """
        out: list[tuple[str, Any]] = []
        last = self.n_layers - 1
        for L in range(self.n_layers):
            if self.bridge:
                out += self._bridge_qkv(L, provide, check)
            else:
                for kind in QKV:
                    out.append((f"blocks.{L}.hook_{kind}_input", _adder((L, kind), provide)))
            if not self.attn_only:
                out.append((f"blocks.{L}.hook_mlp_in", _adder((L, "mlp"), provide)))
        out.append((f"blocks.{last}.hook_resid_post", _adder((self.n_layers, "logits"), provide)))
        return out

    def _bridge_qkv(self, L: int, provide: Callable, check: bool) -> list[tuple[str, Any]]:
        block = self.model.blocks[L]
        store: dict[str, Tensor] = {}

        def keep(t: Tensor, hook: Any = None) -> None:
            store["x"] = t

        def make(kind: str) -> Callable:
            def hook(t: Tensor, hook: Any = None) -> Tensor | None:
                x = store["x"]
                add = provide((L, kind), x)
                if add is None and not check:
                    return None
                W = getattr(block.attn, f"W_{kind.upper()}")
                b = getattr(block.attn, f"b_{kind.upper()}")
                xs = x[:, :, None, :].expand(-1, -1, W.shape[0], -1)

                def project(v: Tensor) -> Tensor:
                    return torch.einsum("bphd,hde->bphe", block.ln1(v), W.to(v.dtype)) + b.to(v.dtype)

                if check:
                    with torch.no_grad():
                        base = project(xs.detach()).reshape(t.shape)
                    err = float((base - t.detach()).abs().max()) / max(float(t.detach().abs().max()), 1e-6)
                    if err > 1e-4:
                        raise UnsupportedModelError(
                            f"blocks.{L}.attn.hook_{kind}: this TransformerBridge has no per-head {kind} input "
                            f"(use_split_qkv_input is refused) and recomputing {kind} from ln1(resid_pre) with "
                            f"W_{kind.upper()} does not reproduce the model's own value (relative error {err:.1e}); "
                            "load the model with backend='hooked' for edge attribution"
                        )
                if add is None:
                    return None
                return project(xs + add.to(xs.dtype)).reshape(t.shape).to(t.dtype)

            return hook

        return [(f"blocks.{L}.hook_resid_pre", keep)] + [(f"blocks.{L}.attn.hook_{k}", make(k)) for k in QKV]


def _adder(slot: Slot, provide: Callable[[Slot, Tensor], Tensor | None]) -> Callable:
    def hook(t: Tensor, hook: Any = None) -> Tensor | None:
        add = provide(slot, t)
        return None if add is None else t + add.to(t.dtype)

    return hook


def capture_hooks(names: list[str], store: dict[str, Tensor]) -> list[tuple[str, Any]]:
    """Forward hooks storing the (live, not detached) activation at each name."""

    def make(name: str) -> Callable:
        def hook(t: Tensor, hook: Any = None) -> None:
            store[name] = t

        return hook

    return [(n, make(n)) for n in names]


__all__ = ["Structure", "Sender", "Receiver", "UnsupportedModelError", "check_model", "head_id", "QKV"]
