"""Hook helpers shared by every capability; they work on HookedTransformer and TransformerBridge alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import DataError
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


def check_tokens(model: Any, tokens: Tensor, *, what: str = "tokens") -> Tensor:
    """Validate a token batch: integer ``[batch, pos]`` within the vocabulary and the model's context."""
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


def to_tokens(model: Any, text: str | Sequence[str] | Tensor, *, prepend_bos: bool = True) -> Tensor:
    """Tokenise text (or pass token ids through) and validate against the model's context."""
    if isinstance(text, Tensor):
        return check_tokens(model, text)
    if isinstance(text, str):
        text = [text]
    text = list(text)
    if not text:
        raise DataError("no prompts given (empty list)")
    try:  # TransformerLens truncates to n_ctx by default: we want to say so instead
        toks = model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)
    except TypeError:
        toks = model.to_tokens(text, prepend_bos=prepend_bos)
    return check_tokens(model, toks, what="prompt tokens")


def run_with_hooks(
    model: Any,
    tokens: Tensor,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    *,
    stop_at_layer: int | None = None,
    return_type: str | None = "logits",
) -> Any:
    """Run a forward pass with temporary forward hooks on either backend."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        if stop_at_layer is not None:
            return model(tokens, stop_at_layer=stop_at_layer)
        return model(tokens, return_type=return_type)


def capture(
    model: Any,
    tokens: Tensor,
    site_names: str | Sequence[str | Site],
    *,
    stop: bool = True,
    grad: bool = False,
) -> dict[str, Tensor]:
    """Activations at the given sites for one batch, in one forward pass that stops after the last needed layer.

    Returns a dict keyed by full hook name. Without ``grad`` the pass runs under inference mode.
    """
    tokens = check_tokens(model, tokens)
    site_list = resolve(model, site_names)
    for s in site_list:
        enable(model, s)
    store: dict[str, Tensor] = {}

    def make_hook(name: str) -> HookFn:
        def hook(t: Tensor, hook: Any = None) -> None:
            store[name] = t if grad else t.detach().clone()

        return hook

    hooks = [(s.name, make_hook(s.name)) for s in site_list]
    stop_layer = stop_at_layer(model, site_list) if stop else None
    ctx = contextlib.nullcontext() if grad else torch.inference_mode()
    with ctx:
        run_with_hooks(model, tokens, hooks, stop_at_layer=stop_layer, return_type=None)
    missing = [s.name for s in site_list if s.name not in store]
    if missing:
        raise DataError(f"hooks did not fire for {missing}; the model's forward pass does not reach these sites")
    return store


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
