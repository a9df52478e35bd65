from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from duplex.model.config import ModelConfig, get_preset
from duplex.model.model import DuplexModel


@pytest.fixture(scope="session")
def tiny() -> ModelConfig:
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny: ModelConfig) -> DuplexModel:
    torch.manual_seed(0)
    return DuplexModel(tiny).eval()


def make_speechy(batch: int, frames: int, cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    """Deterministic test audio: bursts of harmonic tone and noise with silences, (batch, frames*S)."""
    g = torch.Generator().manual_seed(seed)
    S = cfg.frame_samples
    t = torch.arange(frames * S) / cfg.sample_rate
    f0 = 100 + 100 * torch.rand(batch, 1, generator=g)
    tone = 0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.05 * torch.randn(batch, frames * S, generator=g)
    gate = (torch.rand(batch, frames, generator=g) > 0.4).float().repeat_interleave(S, dim=1)
    return tone * gate


Speechy = Callable[..., torch.Tensor]


@pytest.fixture(scope="session")
def speechy() -> Speechy:
    """The test-audio maker (a fixture, so test modules need not import from conftest)."""
    return make_speechy
