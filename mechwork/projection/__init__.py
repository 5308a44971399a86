"""Embedding-space projection: the logit lens and weights read in vocabulary space."""

from .lens import LogitLens, logit_lens
from .weights import Projection, project

__all__ = ["logit_lens", "LogitLens", "project", "Projection"]
