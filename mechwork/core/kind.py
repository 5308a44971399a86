"""What kind of model this is, so that capabilities can refuse what a model cannot do instead of printing noise.

A *causal LM* attends left to right and has a trained language-model head: logits mean something, and every
capability applies. An *encoder* (BERT, MiniLM) attends both ways; a model loaded *headless* (its checkpoint
has no LM head, e.g. the all-MiniLM-L6-v2 sentence encoder or a ``BertModel`` / ``LlamaModel`` folder) has no
trained read-out to vocabulary: logit-based capabilities (logit lens, logit-difference metrics, CE-loss
recovered, generation) refuse it with :class:`~mechwork.core.errors.UnsupportedModelError`, and the model's
*output* is its last hidden state instead (the site :func:`mechwork.core.hooks.output_site` names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedModelError

_ENCODER_PREFIXES = ("Bert", "Roberta", "DistilBert", "Electra", "Albert", "XLMRoberta", "MPNet", "Deberta")


@dataclass(frozen=True)
class ModelKind:
    """Attributes
    ----------
    causal : bool
        Attention is left to right (a position never sees later ones).
    lm_head : bool
        The model has a trained head that reads the residual stream out to vocabulary logits.
    name : str
        ``"causal-lm"``, ``"encoder"`` (bidirectional, with an MLM head), ``"headless-encoder"`` or
        ``"headless-causal"``.
    """

    causal: bool
    lm_head: bool

    @property
    def name(self) -> str:
        base = "causal" if self.causal else "encoder"
        if self.lm_head:
            return "causal-lm" if self.causal else "encoder"
        return f"headless-{base}"


def architecture(model: Any) -> str:
    """The Hugging Face architecture behind a model (``""`` for mechwork's own and unknown models)."""
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
    if not arch:
        orig = getattr(model, "original_model", None)
        arch = type(orig).__name__ if orig is not None else ""
    return str(arch or "")


def is_causal(model: Any) -> bool:
    """Whether ``model`` attends left to right only."""
    if getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "bidirectional":
        return False
    return not architecture(model).startswith(_ENCODER_PREFIXES)


def trained_per_document(model: Any) -> bool:
    """Whether ``model`` was trained one document per row (mechwork's own models, ``model.mechwork_document_rows``).

    Such a model never saw two documents in one window, nor positions past its longest training document, so
    activations of documents packed back to back are out of its distribution (toy-mixed: cross-entropy 8.4 nats
    on packed windows against 1.8 one document per row); capabilities then default to one document per row.
    """
    return bool(getattr(model, "mechwork_document_rows", False))


def model_kind(model: Any) -> ModelKind:
    """The :class:`ModelKind` of a loaded model (``mechwork.load_model`` records a missing head)."""
    return ModelKind(causal=is_causal(model), lm_head=bool(getattr(model, "mechwork_lm_head", True)))


def require_logits(model: Any, what: str) -> None:
    """Raise :class:`UnsupportedModelError` when ``what`` needs logits and ``model`` has no trained LM head."""
    kind = model_kind(model)
    if kind.lm_head:
        return
    spec = getattr(model, "mechwork_spec", None) or architecture(model) or type(model).__name__
    raise UnsupportedModelError(
        f"{what} needs the model's logits, but {spec} is a {kind.name} model: its checkpoint has no trained "
        "language-model head, so any logits would come from random weights. Use hidden-state read-outs instead "
        "(e.g. a metric on the last hidden state such as mechwork.tasks.embedding_similarity, probes on cached "
        "activations, erasure)."
    )


def require_causal(model: Any, what: str) -> None:
    """Raise :class:`UnsupportedModelError` when ``what`` assumes left-to-right attention."""
    if is_causal(model):
        return
    raise UnsupportedModelError(
        f"{what} assumes a causal (left-to-right) model; {architecture(model) or type(model).__name__} attends "
        "in both directions"
    )
