"""Entry point of one rank in the expert-parallel tests (spawned as a real process)."""

from __future__ import annotations

import torch

from duplex.model import checkpoint
from duplex.model.model import DuplexModel, ExpertShard, delay
from duplex.model.parallel import ExpertGroup, init_group, serve_experts


def rank_main(rank: int, world: int, ckpt: str, leader: str, audio: torch.Tensor, out: str) -> None:
    torch.set_num_threads(1)
    init_group(rank, world, leader, backend="gloo", timeout_s=120)
    part = checkpoint.load(ckpt, rank=rank, world_size=world)
    if rank > 0:
        assert isinstance(part, ExpertShard)
        serve_experts(part)
        return
    assert isinstance(part, DuplexModel)
    group = ExpertGroup(part)
    try:
        state = part.new_state(audio.shape[0])
        steps = [part.step(state, audio[:, i : i + 3200]) for i in range(0, audio.shape[1], 3200)]
        codes = torch.cat([s.audio_codes for s in steps], 1)
        probs = torch.cat([s.control_probs for s in steps], 1)
        cfg = part.cfg
        D = cfg.feedback_delay_frames
        with torch.no_grad():
            full = part(
                audio,
                delay(codes, D, cfg.audio_codes),
                delay(torch.cat([s.text_tokens for s in steps], 1), D, cfg.pad_token),
                delay(torch.cat([s.control for s in steps], 1), D, cfg.control_classes),
            )
        torch.save({"codes": codes, "probs": probs, "full_audio_logits": full.audio}, out)
    finally:
        group.stop()
