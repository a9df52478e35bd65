from __future__ import annotations

import importlib.util

import pytest

from duplex.model.backends import BackendUnavailable, select_backend
from duplex.model.config import ModelError


def test_torch_backend_always_available() -> None:
    assert select_backend("torch").name == "torch"


def test_tensorrt_llm_is_selected_or_refused_clearly() -> None:
    if importlib.util.find_spec("tensorrt_llm") is None:
        with pytest.raises(BackendUnavailable, match="needs the 'tensorrt_llm' package"):
            select_backend("tensorrt-llm")
    else:  # a GPU image with TensorRT-LLM: the hook resolves its fused MoE
        assert select_backend("tensorrt-llm").fused_moe is not None


def test_unknown_backend() -> None:
    with pytest.raises(ModelError, match="unknown engine backend 'vllm'"):
        select_backend("vllm")
