"""Sessions per GPU for the Moshi family (``duplex model plan``): counts against the upstream modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.config import ModelError
from duplex.model.moshi.plan import GIB, plan_moshi
from duplex.model.moshi.tiny import init_checkpoint
from duplex.model.moshi.upstream import upstream_loaders

SMALL: dict[str, Any] = dict(
    dim=64,
    num_heads=4,
    num_layers=2,
    context=50,
    depformer_dim=32,
    depformer_dim_feedforward=64,
    depformer_num_heads=2,
    depformer_num_layers=1,
    text_card=100,
    card=64,
    hidden_scale=2,
)


def small_args() -> dict[str, Any]:
    return dict(upstream_loaders()._lm_kwargs) | SMALL


def test_the_published_7b_shape_gives_the_known_budget() -> None:
    p = plan_moshi(None, gpu_memory_gib=80.0, headroom=0.05)
    assert 7.6e9 < p.lm_params < 7.8e9  # Moshi-7B: 7.69 B
    assert p.kv_bytes_per_frame == 512 * 1024  # 2 × 32 layers × 4096 × 2 bytes (bfloat16)
    assert p.context_frames == 3000
    assert 1.4 * GIB < p.session_bytes < 1.6 * GIB
    assert 16.0 < p.gflop_per_frame < 18.0
    assert 38 <= p.sessions <= 44  # ≈ 40 full-window sessions on an 80 GB H100
    bigger = plan_moshi(None, gpu_memory_gib=141.0, headroom=0.05)
    assert 2 * p.sessions - 2 <= bigger.sessions <= 2 * p.sessions + 4  # ≈ 80 on an H200


def test_kv_per_frame_is_what_upstream_preallocates_per_session() -> None:
    from moshi.models.lm import LMGen, LMModel

    args = small_args()
    p = plan_moshi(args, dtype=torch.float32)
    lm = LMModel(device="cpu", dtype=torch.float32, **args).eval()
    assert p.lm_params == sum(t.numel() for t in lm.parameters())
    batch = 3
    with LMGen(lm, use_sampling=False).streaming(batch):
        kv = [
            m._streaming_state.kv_cache.cache
            for m in lm.transformer.modules()
            if getattr(getattr(m, "_streaming_state", None), "kv_cache", None) is not None
        ]
        assert len(kv) == args["num_layers"]
        per_session = sum(t.numel() * t.element_size() for t in kv) // batch
    assert per_session == p.kv_bytes_per_frame * p.context_frames


def test_a_shorter_window_fits_more_sessions() -> None:
    full = plan_moshi(None, gpu_memory_gib=80.0)
    half = plan_moshi(None, gpu_memory_gib=80.0, context=1500)
    assert half.sessions > full.sessions
    with pytest.raises(ModelError, match="context 0"):
        plan_moshi(None, context=0)


def test_plan_from_a_checkpoint_directory_and_its_errors(tmp_path: Path) -> None:
    directory = init_checkpoint("moshi", tmp_path / "m", seed=0)
    config = json.loads((directory / "config.json").read_text())
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["context_frames"] == config["context"]
    assert plan["kv_bytes_per_frame"] == 2 * config["num_layers"] * config["dim"] * 2
    (directory / "config.json").write_text(json.dumps(config | {"delays": [0]}))
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(directory)])
    assert result.exit_code == 2 and "'delays' has 1 entries" in result.output
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a directory" in result.output
    result = CliRunner().invoke(app, ["model", "plan", "--family", "hibiki"])
    assert result.exit_code == 2 and "--family 'hibiki'" in result.output


def test_guidance_plans_two_lm_rows_per_session_as_upstream_preallocates(tmp_path: Path) -> None:
    """Hibiki with classifier-free guidance: upstream's ``LMGen`` streams two LM rows per session, so a guided
    session holds twice the temporal transformer's KV (Mimi's caches are not doubled)."""
    from moshi.conditioners.base import ConditionAttributes
    from moshi.models.lm import LMGen

    from duplex.model.moshi.checkpoint import load_checkpoint

    directory = init_checkpoint("hibiki", tmp_path / "h", seed=0)
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(directory), "--json"])
    plain = json.loads(result.output)
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(directory), "--cfg-coef", "3", "--json"])
    assert result.exit_code == 0, result.output
    guided = json.loads(result.output)
    assert (plain["lm_rows_per_session"], guided["lm_rows_per_session"]) == (1, 2)
    lm_part = plain["kv_bytes_per_frame"] * plain["context_frames"]
    assert lm_part < guided["session_bytes"] - plain["session_bytes"] < plain["session_bytes"]
    assert guided["sessions"] < plain["sessions"]
    lm = load_checkpoint(directory, dtype=torch.bfloat16).lm
    batch = 3
    labels = ["very_good"] * batch + ["very_bad"] * batch
    conditions = lm.condition_provider.prepare_and_provide(
        [ConditionAttributes(text={"description": v}, tensor={}) for v in labels]
    )
    with LMGen(lm, use_sampling=False, cfg_coef=3.0, condition_tensors=conditions).streaming(batch):
        kv = [
            m._streaming_state.kv_cache.cache
            for m in lm.transformer.modules()
            if getattr(getattr(m, "_streaming_state", None), "kv_cache", None) is not None
        ]
        per_session = sum(t.numel() * t.element_size() for t in kv) // batch
    assert per_session == 2 * lm_part
    moshi = init_checkpoint("moshi", tmp_path / "m", seed=0)
    result = CliRunner().invoke(app, ["model", "plan", "--checkpoint", str(moshi), "--cfg-coef", "3"])
    assert result.exit_code == 2 and "--cfg-coef applies to a Hibiki checkpoint" in result.output
