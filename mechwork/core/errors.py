"""Exception hierarchy. Every error mechwork raises on bad input derives from :class:`MechworkError`
and says what was expected and what was found."""

from __future__ import annotations


class MechworkError(Exception):
    """Base class of every error mechwork raises on bad input or bad state."""


class SiteError(MechworkError, KeyError):
    """An activation site name that the model does not have (the message lists the closest valid names)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConfigError(MechworkError, ValueError):
    """A configuration that is invalid: unknown field, wrong type, inconsistent values."""


class CheckpointError(MechworkError, OSError):
    """A checkpoint / artefact folder that is missing files, truncated, foreign or inconsistent."""


class ShapeError(MechworkError, ValueError):
    """Tensors whose shape, dtype or width does not match what the operation needs."""


class ModelNotFoundError(MechworkError, LookupError):
    """A model spec that names no shipped model, no folder, and nothing reachable on a hub."""


class NonFiniteError(MechworkError, FloatingPointError):
    """NaN or inf values where finite numbers are required (activations, losses, metrics)."""


class DataError(MechworkError, ValueError):
    """Input data that cannot be used: empty prompt sets, mismatched batches, prompts longer than the context."""


class UnsupportedModelError(MechworkError, TypeError):
    """A capability the model cannot support: logits of a model without a trained LM head, a causal-only method
    on a bidirectional encoder, a task whose words the model's tokenizer cannot render as single tokens."""


class MechworkWarning(UserWarning):
    """A result that is computed but may not mean what it seems: a near-zero metric gap, unknown words for a
    word-level tokenizer, positions that differ across a batch, an SAE run looping over its data."""


__all__ = [
    "MechworkError",
    "SiteError",
    "ConfigError",
    "CheckpointError",
    "ShapeError",
    "ModelNotFoundError",
    "NonFiniteError",
    "DataError",
    "UnsupportedModelError",
    "MechworkWarning",
]
