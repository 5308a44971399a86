"""Embedding-space projection: the logit lens and weights read in vocabulary space."""

from .lens import LogitLens, logit_lens
from .scores import copying_score, head_scores, induction_qk, induction_score, positional_pattern, prev_token_score
from .weights import Projection, project

__all__ = [
    "logit_lens",
    "LogitLens",
    "project",
    "Projection",
    "copying_score",
    "prev_token_score",
    "positional_pattern",
    "induction_qk",
    "induction_score",
    "head_scores",
]
