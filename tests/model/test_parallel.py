"""Expert parallelism with real processes over gloo: sharded results equal the unsharded model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _parallel_worker import rank_main

from duplex.model import checkpoint
from duplex.model.config import ModelConfig
from duplex.model.model import DuplexModel, delay
from duplex.serving.ports import free_port


def _spawn_target(rank: int, world: int, ckpt: str, leader: str, audio: torch.Tensor, out: str) -> None:
    rank_main(rank, world, ckpt, leader, audio, out)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_equals_unsharded(
    tmp_path: Path, tiny_model: DuplexModel, tiny: ModelConfig, world: int, speechy: Callable[..., torch.Tensor]
) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    checkpoint.save(tiny_model, ckpt)
    audio = speechy(3, 40, tiny, seed=11)
    out = tmp_path / "rank0.pt"
    mp.start_processes(
        _spawn_target,
        args=(world, str(ckpt), f"127.0.0.1:{free_port()}", audio, str(out)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    got = torch.load(out)

    state = tiny_model.new_state(3)
    steps = [tiny_model.step(state, audio[:, i : i + 3200]) for i in range(0, audio.shape[1], 3200)]
    codes = torch.cat([s.audio_codes for s in steps], 1)
    probs = torch.cat([s.control_probs for s in steps], 1)
    assert torch.equal(got["codes"], codes)
    torch.testing.assert_close(got["probs"], probs, rtol=1e-4, atol=1e-5)
    D = tiny.feedback_delay_frames
    with torch.no_grad():
        full = tiny_model(
            audio,
            delay(codes, D, tiny.audio_codes),
            delay(torch.cat([s.text_tokens for s in steps], 1), D, tiny.pad_token),
            delay(torch.cat([s.control for s in steps], 1), D, tiny.control_classes),
        )
    torch.testing.assert_close(got["full_audio_logits"], full.audio, rtol=1e-4, atol=1e-4)
