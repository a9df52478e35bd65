"""Execution backends for the model's MoE and attention.

``torch``         the model as written (CPU or CUDA, float32/bfloat16); always available.
``tensorrt-llm``  TensorRT-LLM's PyTorch backend on GPU images: our architecture is registered by name with
                  its auto-model registry and its fused MoE module replaces the per-expert GEMMs. Selected
                  only when the ``tensorrt_llm`` package is importable; otherwise a clear error says so.
                  Nothing here is exercised in CPU-only CI (no GPU, no package): the tests check selection
                  and the failure message; the GPU path is recorded in docs/benchmarks.md when run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from .config import ModelError

BackendName = Literal["torch", "tensorrt-llm"]
ARCHITECTURE = "DuplexForConversation"
"""The name our architecture registers under in TensorRT-LLM's auto-model registry."""


class BackendUnavailable(ModelError):
    """The requested backend cannot run in this environment."""


@dataclass(frozen=True)
class Backend:
    name: BackendName
    fused_moe: type | None = None
    """TensorRT-LLM's fused MoE module class (tensorrt-llm backend only)."""
    registry: ModuleType | None = None
    """TensorRT-LLM's ``modeling_utils`` (holds ``register_auto_model``)."""


def select_backend(name: str) -> Backend:
    """Resolve a backend by name; raises ``BackendUnavailable`` naming what is missing."""
    if name == "torch":
        return Backend("torch")
    if name != "tensorrt-llm":
        raise ModelError(f"unknown engine backend {name!r}; choose 'torch' or 'tensorrt-llm'")
    try:
        importlib.import_module("tensorrt_llm")
        registry = importlib.import_module("tensorrt_llm._torch.models.modeling_utils")
        fused = importlib.import_module("tensorrt_llm._torch.modules.fused_moe")
    except ImportError as e:
        raise BackendUnavailable(
            "engine.backend 'tensorrt-llm' needs the 'tensorrt_llm' package (NVIDIA's GPU images ship it); "
            f"it is not importable here ({e}). Use backend 'torch', or an engine image with TensorRT-LLM."
        ) from e
    moe_cls = getattr(fused, "FusedMoE", None) or getattr(fused, "CutlassFusedMoE", None)
    if moe_cls is None or not hasattr(registry, "register_auto_model"):
        raise BackendUnavailable("this tensorrt_llm version lacks FusedMoE / register_auto_model")
    return Backend("tensorrt-llm", fused_moe=moe_cls, registry=registry)
