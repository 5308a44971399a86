"""The small shared core: site names and validation, hook helpers, atomic writes, config (de)serialisation,
devices/dtypes and errors. Capabilities share these pieces and nothing else."""

from .config import Config, save_config
from .devices import dtype_name, parse_device, parse_dtype
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MechworkError,
    MechworkWarning,
    ModelNotFoundError,
    NonFiniteError,
    ShapeError,
    SiteError,
    UnsupportedModelError,
)
from .hooks import (
    capture,
    check_tokens,
    forward_kwargs,
    hooked,
    model_device,
    model_dtype,
    n_ctx,
    output_site,
    run_with_hooks,
    to_tokens,
)
from .io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, load_tensors, read_json, save_tensors
from .kind import ModelKind, is_causal, model_kind, require_causal, require_logits
from .prompts import Encoded, decode, encode, encode_texts, str_tokens, token_str, tokenizer_of
from .sites import Site, enable, is_bridge, resolve, site, sites, stop_at_layer

__all__ = [name for name in dir() if not name.startswith("_")]
