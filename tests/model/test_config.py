from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.model import DuplexModel, ExpertShard
from duplex.model.planner import count_params

runner = CliRunner()


def test_tiny_counts_equal_real_parameters(tiny: ModelConfig) -> None:
    model = DuplexModel(tiny)
    pc = count_params(tiny)
    assert pc.total == sum(p.numel() for p in model.parameters())
    assert 2_000_000 <= pc.total <= 10_000_000  # a real model, and a bfloat16 checkpoint well under 20 MB
    routed = sum(b.moe.experts.w13.numel() + b.moe.experts.w2.numel() for b in model.layers if b.moe.experts)
    assert pc.active == pc.total - routed + routed * tiny.top_k // tiny.n_experts


def test_large_preset_is_276b_total_12b_active() -> None:
    pc = count_params(get_preset("tml-interaction-small"))
    assert abs(pc.total - 276e9) / 276e9 < 0.02
    assert abs(pc.active - 12e9) / 12e9 < 0.02


def test_info_cli_json() -> None:
    res = runner.invoke(app, ["model", "info", "--preset", "tml-interaction-small", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["layers"] == 48 and info["experts"] == 160 and info["top_k"] == 2
    assert info["total_params"] == count_params(get_preset("tml-interaction-small")).total


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ModelError, match=r"unknown preset 'huge'.*tiny"):
        get_preset("huge")
    res = runner.invoke(app, ["model", "info", "--preset", "huge"])
    assert res.exit_code != 0 and "unknown preset 'huge'" in res.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d_model": 250}, "divisible by n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"top_k": 9}, "top_k"),
        ({"text_vocab": 100}, "text_vocab"),
    ],
)
def test_invalid_configs_name_the_field(change: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**get_preset("tiny").model_dump(), **change})


def test_chunk_sizes(tiny: ModelConfig) -> None:
    assert tiny.frames_per_chunk(200) == 5
    assert tiny.frames_per_chunk(80) == 2
    for bad in (40, 420, 100):
        with pytest.raises(ModelError, match="chunk_ms"):
            tiny.frames_per_chunk(bad)


def test_expert_shard_holds_only_experts(tiny: ModelConfig) -> None:
    shard = ExpertShard(tiny, (2, 2))
    names = set(shard.state_dict())
    assert names == {f"blocks.{i}.moe.experts.{w}" for i in range(tiny.n_layers) for w in ("w13", "w2")}
