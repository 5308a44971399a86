"""Concept erasure (placeholder while the package is assembled)."""
from .eraser import Eraser, EraserConfig
from .inlp import INLP
from .leace import LEACE, LeaceFitter
from .rlace import RLACE
