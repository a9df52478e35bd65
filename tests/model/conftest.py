from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelConfig, get_preset
from duplex.model.corpus import make_corpus
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


CliError = Callable[[list[str], str], None]


def expect_cli_error(args: list[str], message: str) -> None:
    """Run ``duplex ARGS``: it must exit 2 with ``message`` in its output (line wrapping ignored)."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


@pytest.fixture(scope="session")
def cli_error() -> CliError:
    """The bad-input checker of the CLI (a fixture, so test modules need not import from conftest)."""
    return expect_cli_error


@pytest.fixture(scope="session")
def plain_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small corpus of ordinary conversations: no timed requests, no count questions."""
    out = tmp_path_factory.mktemp("plain") / "plain"
    make_corpus(out, 3, seed=0, min_duration_s=6, max_duration_s=8, heldout_fraction=0.0)
    return out


EvalWithPeers = Callable[[list[str], Path], tuple[dict[str, Any], dict[str, dict[str, Any]]]]


def eval_json_with_peers(args: list[str], out: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run ``duplex ARGS`` (a ``model eval``) with the cascade and oracle baselines and ``--json OUT``: it must
    succeed; the JSON document and its systems by name."""
    result = CliRunner().invoke(app, [*args, "--baseline", "cascade", "--baseline", "oracle", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    return doc, {s["system"]: s for s in doc["systems"]}


@pytest.fixture(scope="session")
def eval_with_peers() -> EvalWithPeers:
    """The ``model eval --json`` runner (a fixture, so test modules need not import from conftest)."""
    return eval_json_with_peers
