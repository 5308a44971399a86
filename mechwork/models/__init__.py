"""Model loading (shipped zoo, mechwork folders, Hugging Face folders and names) and the zoo's training."""

from .backends import hooked_to_bridge_state
from .config import ModelConfig, TrainConfig
from .load import load_model
from .zoo import DEFAULT, ENTRIES

__all__ = ["load_model", "ModelConfig", "TrainConfig", "ENTRIES", "DEFAULT", "hooked_to_bridge_state"]
