"""Where a served model comes from: the spec shared by ``duplex engine`` flags, the CRD and Helm values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSource(BaseModel):
    """Which weights to serve and in what precision."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    preset: str = "tiny"
    """Architecture preset (``duplex model info --preset NAME``); must match the checkpoint's embedded config."""
    uri: str | None = None
    """Checkpoint (.safetensors) path or URI inside the pod; empty = the shipped reference checkpoint, or random
    weights (with a warning) when none ships."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype (bfloat16 on GPUs)."""
    seed: int = Field(0, ge=0)
    """Seed for random weights when no checkpoint is given."""
