"""Hook helpers shared by every capability; they work on HookedTransformer and TransformerBridge alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import DataError, SiteError
from .kind import is_causal, model_kind, require_logits
from .sites import Site, enable, resolve, stop_at_layer

HookFn = Callable[[Tensor, Any], Tensor | None]


def n_ctx(model: Any) -> int:
    return int(model.cfg.n_ctx)


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


def model_dtype(model: Any) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except StopIteration:  # pragma: no cover
        return torch.float32


def id_matrix(tokens: Any, *, what: str = "tokens") -> Tensor:
    """Integer token ids as a non-empty ``[batch, pos]`` int64 tensor (a 1-D sequence becomes one row)."""
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise DataError(f"{what} must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise DataError(f"{what} must have shape [batch, pos], got {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise DataError(f"{what} is empty (shape {tuple(tokens.shape)})")
    return tokens.long()


def check_tokens(model: Any, tokens: Tensor, *, what: str = "tokens") -> Tensor:
    """Validate a token batch: integer ``[batch, pos]`` within the vocabulary and the model's context."""
    tokens = id_matrix(tokens, what=what)
    ctx = n_ctx(model)
    if tokens.shape[1] > ctx:
        raise DataError(
            f"{what} has {tokens.shape[1]} positions but the model's context is {ctx} tokens; "
            "shorten the prompts or split them into windows of at most n_ctx tokens"
        )
    vocab = int(model.cfg.d_vocab)
    if tokens.numel() and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
        raise DataError(
            f"{what} contains ids outside the vocabulary [0, {vocab}): min {int(tokens.min())}, max {int(tokens.max())}"
        )
    return tokens.long()


def to_tokens(model: Any, text: str | Sequence[str] | Tensor, *, prepend_bos: bool | None = None) -> Tensor:
    """Token ids ``[batch, pos]`` of prompts (see :func:`mechwork.core.prompts.encode`, which also gives the
    attention mask of padded rows)."""
    from .prompts import encode

    return encode(model, text, bos=prepend_bos).tokens


def forward_kwargs(model: Any, attention_mask: Tensor | None) -> dict[str, Any]:
    """Keyword arguments that pass an attention mask to a forward pass where it matters.

    Rows are always right-padded, so a causal model computes every real token exactly as without padding
    (it never attends to later positions): the mask is passed only to bidirectional models, which would
    otherwise attend to the padding.
    """
    if attention_mask is None or is_causal(model) or bool(attention_mask.bool().all()):
        return {}
    return {"attention_mask": attention_mask}


class HooksNotFiredError(SiteError, DataError):
    """Requested hook points that did not fire in a forward pass (a site the model's computation never reaches)."""


class _Done(Exception):
    """Raised by the last capture hook: everything asked for is captured, the rest of the pass is skipped."""


def output_site(model: Any) -> str:
    """The hook whose value is a headless model's output (its last hidden state)."""
    return f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"


def run_with_hooks(
    model: Any,
    tokens: Tensor,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    *,
    stop_at_layer: int | None = None,
    return_type: str | None = "output",
    attention_mask: Tensor | None = None,
) -> Any:
    """Run a forward pass with temporary forward hooks on either backend.

    ``return_type="output"`` (default) returns the model's output: logits ``[batch, pos, vocab]`` for a model
    with a trained LM head, the last hidden state ``[batch, pos, d_model]`` for a headless one (an encoder
    such as all-MiniLM-L6-v2; see :mod:`mechwork.core.kind`). ``"logits"`` refuses headless models.
    """
    kw = forward_kwargs(model, attention_mask)
    if return_type == "logits":
        require_logits(model, "this computation")
    if return_type == "output" and stop_at_layer is None:
        if not model_kind(model).lm_head:
            got: dict[str, Tensor] = {}

            def grab(t: Tensor, hook: Any = None) -> None:
                got["h"] = t
                raise _Done

            try:
                with model.hooks(fwd_hooks=list(fwd_hooks) + [(output_site(model), grab)]):
                    model(tokens, return_type=None, **kw)
            except _Done:
                pass
            return got["h"]
        return_type = "logits"
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        if stop_at_layer is not None:
            return model(tokens, stop_at_layer=stop_at_layer, **kw)
        return model(tokens, return_type=return_type, **kw)


def capture(
    model: Any,
    tokens: Tensor,
    site_names: str | Site | Sequence[str | Site],
    *,
    attention_mask: Tensor | None = None,
    hooks: Sequence[tuple[str, HookFn]] = (),
    output: bool = False,
    stop: bool = True,
    grad: bool = False,
    clone: bool = True,
    autocast: torch.dtype | None = None,
) -> Any:
    """Activations at the given sites for one batch of tokens: the one capture every capability uses.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
    tokens : Int[Tensor, "batch pos"]
        Token ids (see :func:`mechwork.core.prompts.encode` for texts and prompt batches).
    site_names : str, Site or sequence
        Full hook names or aliases; gated sites are switched on.
    attention_mask : Int[Tensor, "batch pos"], optional
        Right padding of the rows; passed to encoders (see :func:`forward_kwargs`).
    hooks : sequence of (site, fn)
        Further forward hooks on during the pass (e.g. erasers, patches); they run before the capture hooks,
        so a capture at a hooked site sees the modified value.
    output : bool
        Also return the model's output (logits, or a headless model's last hidden state): ``(output, acts)``.
        The pass then runs to the end.
    stop : bool
        Without ``output``: stop the pass right after the last site is captured (no later layers, no final
        LayerNorm or unembedding).
    grad : bool
        Keep the autograd graph (no inference mode, no detach).
    clone : bool
        Copy each captured tensor (``False`` saves memory when nothing in the pass writes to it afterwards).
    autocast : torch.dtype, optional
        Run the pass under ``torch.autocast`` with this dtype.

    Returns
    -------
    dict of str to Tensor, or (Tensor, dict)
        Keyed by full hook name.
    """
    tokens = check_tokens(model, tokens)
    site_list = resolve(model, site_names)
    for s in site_list:
        enable(model, s)
    extra = [(resolve(model, n)[0].name, f) for n, f in hooks]
    for n, _ in extra:
        enable(model, resolve(model, n)[0])
    store: dict[str, Tensor] = {}
    wanted = {s.name for s in site_list}
    early = stop and not output

    def make_hook(name: str) -> HookFn:
        def hook(t: Tensor, hook: Any = None) -> None:
            store[name] = t if grad else (t.detach().clone() if clone else t.detach())
            if early and len(store) == len(wanted):
                raise _Done

        return hook

    all_hooks = extra + [(s.name, make_hook(s.name)) for s in site_list]
    stop_layer = stop_at_layer(model, site_list) if early else None
    ctx = contextlib.nullcontext() if grad else torch.inference_mode()
    ac = torch.autocast(tokens.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    out = None
    try:
        with ctx, ac:
            if output:
                out = run_with_hooks(model, tokens, all_hooks, attention_mask=attention_mask)
            else:
                run_with_hooks(
                    model, tokens, all_hooks, stop_at_layer=stop_layer, return_type=None, attention_mask=attention_mask
                )
    except _Done:
        pass
    missing = [s.name for s in site_list if s.name not in store]
    if missing:
        raise HooksNotFiredError(
            f"hooks did not fire for {missing}; the model's forward pass does not reach these sites"
        )
    return (out, store) if output else store


@contextlib.contextmanager
def hooked(
    model: Any, fwd_hooks: Sequence[tuple[str, HookFn]] = (), bwd_hooks: Sequence[tuple[str, HookFn]] = ()
) -> Iterator[Any]:
    """Context manager adding forward/backward hooks by site name (aliases allowed), removed on exit."""
    fwd = [(resolve(model, n)[0].name, f) for n, f in fwd_hooks]
    bwd = [(resolve(model, n)[0].name, f) for n, f in bwd_hooks]
    for n, _ in fwd + bwd:
        enable(model, resolve(model, n)[0])
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        yield model
