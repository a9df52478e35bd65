from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.model import DuplexModel, ExpertShard, expert_range
from duplex.model.planner import GIB, kv_bytes_per_session, plan, shard_weight_bytes

runner = CliRunner()


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_weight_bytes_equal_real_tensors(tiny: ModelConfig, world: int) -> None:
    for rank in range(world):
        rng = expert_range(tiny, rank, world)
        part = DuplexModel(tiny, rng) if rank == 0 else ExpertShard(tiny, rng)
        real = sum(t.numel() * t.element_size() for t in part.state_dict().values())
        assert shard_weight_bytes(tiny, world, rank) == real


def test_kv_bytes_equal_real_state(tiny: ModelConfig) -> None:
    state = DuplexModel(tiny).new_state(3)
    assert kv_bytes_per_session(tiny) == state.nbytes_per_slot()


def test_plan_picks_the_smallest_fitting_shard_count() -> None:
    cfg = get_preset("tml-interaction-small")
    p = plan(cfg, 80, sessions=16)
    assert cfg.n_experts % p.shards == 0
    assert p.bytes_per_shard + p.headroom_bytes <= 80 * GIB
    smaller = [n for n in range(1, p.shards) if cfg.n_experts % n == 0]
    for n in smaller:  # none of the smaller valid counts fits
        assert shard_weight_bytes(cfg, n, 0) + p.kv_bytes + p.headroom_bytes > 80 * GIB
    assert plan(cfg, 141, sessions=16).shards < p.shards  # bigger GPUs, fewer shards


def test_plan_that_cannot_fit_says_why() -> None:
    with pytest.raises(ModelError, match="does not fit 8 GiB GPUs"):
        plan(get_preset("tml-interaction-small"), 8, sessions=64)
    with pytest.raises(ModelError, match="gpu_memory_gib must be positive"):
        plan(get_preset("tiny"), 0)


def test_plan_cli_json() -> None:
    res = runner.invoke(
        app,
        ["model", "plan", "--preset", "tml-interaction-small", "--gpu-memory-gib", "80", "--sessions", "16", "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {"shards", "experts_per_shard", "bytes_per_shard"} <= set(out)
    assert out["shards"] * out["experts_per_shard"] == 160
    res = runner.invoke(app, ["model", "plan", "--preset", "tml-interaction-small", "--gpu-memory-gib", "4"])
    assert res.exit_code == 2 and "does not fit" in res.output
