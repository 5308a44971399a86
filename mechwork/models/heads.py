"""Checking a Hugging Face checkpoint against the model built from it: a missing LM head makes the model
*headless* (never a random head), missing weights anywhere else are an error, a missing tokenizer a warning.

``transformers`` fills parameters absent from the checkpoint with fresh random values and says so only in a
log line. The all-MiniLM-L6-v2 checkpoint is a ``BertModel`` (no ``cls.*`` masked-LM head), so loading it as
``BertForMaskedLM`` (what TransformerBridge does) gives logits from a random head that differ between two loads.
Here such head parameters are set to NaN, so any logits computed from them are NaN rather than plausible
noise, and the model is marked headless (``model.mechwork_lm_head = False``, see :mod:`mechwork.core.kind`):
mechwork's logit-based capabilities refuse it and its output is its last hidden state.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, MechworkWarning


def split_missing(hf_model: Any, missing: list[str]) -> tuple[list[str], list[str]]:
    """``(head, body)``: parameters ``transformers`` reported missing from the checkpoint, split into those of the
    LM head (outside the base model) and those of the base model (``bert.``, ``transformer.``, ``model.`` ...)."""
    prefix = str(getattr(hf_model, "base_model_prefix", "") or "")
    params = dict(hf_model.named_parameters())
    head: list[str] = []
    body: list[str] = []
    for name in missing:
        if name not in params:  # a buffer (position ids ...), not a weight
            continue
        (body if prefix and name.startswith(prefix + ".") else head).append(name)
    return head, body


def check_weights(hf_model: Any, missing: list[str], folder: Path) -> bool:
    """Validate a just-loaded ``hf_model`` given the parameters ``transformers`` found missing; returns whether it
    has its head. A missing head is set to NaN (module docstring); missing body weights raise
    :class:`CheckpointError`."""
    head, body = split_missing(hf_model, missing)
    if body:
        raise CheckpointError(
            f"{folder}: the checkpoint lacks {len(body)} weights the {type(hf_model).__name__} needs "
            f"({', '.join(body[:4])}{' ...' if len(body) > 4 else ''}); they would be random. Is this the right "
            "folder for its config.json?"
        )
    if not head:
        return True
    params = dict(hf_model.named_parameters())
    with torch.no_grad():
        for name in head:
            params[name].fill_(float("nan"))
    return False


def load_checked(model_class: Any, folder: Path, **kwargs: Any) -> tuple[Any, bool]:
    """``model_class.from_pretrained(folder)`` (safetensors only), checked: ``(hf_model, has_head)``."""
    hf_model, info = model_class.from_pretrained(
        str(folder), output_loading_info=True, use_safetensors=True, torch_dtype=torch.float32, **kwargs
    )
    return hf_model.eval(), check_weights(hf_model, list(info.get("missing_keys", [])), folder)


def mark_headless(model: Any, has_head: bool, folder: Path | None, *, quiet: bool = False) -> Any:
    """Record on a loaded model whether it has a trained LM head (warns once when it has none)."""
    model.mechwork_lm_head = has_head
    if not has_head and not quiet:
        warnings.warn(
            f"{folder}: the checkpoint has no language-model head; the model is loaded headless (its output is the "
            "last hidden state; logit-based capabilities refuse it)",
            MechworkWarning,
            stacklevel=4,
        )
    return model


def warn_no_tokenizer(folder: Path) -> None:
    warnings.warn(
        f"{folder} has no tokenizer files: the model is loaded without a tokenizer. Token-id inputs work; text "
        "prompts, tasks and token strings need the tokenizer files (tokenizer.json / tokenizer_config.json) "
        "in the folder",
        MechworkWarning,
        stacklevel=4,
    )
