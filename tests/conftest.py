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
