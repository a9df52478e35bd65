"""The executor runs the real tiny model and codec under one execution mask: an inactive row of a plan is
computed but nothing of it is committed, in the model's state and the codec's alike."""

from __future__ import annotations

from typing import Any

import torch

from duplex.model.codec import Codec
from duplex.model.family_duplex import ByteTextDecoder, DuplexServed
from duplex.serving.engine.executor import StepExecutor
from duplex.serving.engine.planner import PlannedRow, SlotReset, StepPlan
from duplex.serving.engine.session import Conversation, InputChunk

CHUNK = 3200


def tone_chunk(seq: int, hz: float) -> InputChunk:
    t = torch.arange(CHUNK, dtype=torch.float32) / 16000
    return InputChunk(
        seq, (0.3 * 32767 * torch.sin(2 * torch.pi * hz * t)).to(torch.int16).numpy().tobytes(), 0, 0.0, 0
    )


def codec_row(ex: StepExecutor, slot: int) -> list[float]:
    cs = ex.state.codec
    return [float(cs.phase[slot]), float(cs.amp[slot]), float(cs.f0[slot]), float(cs.noise_pos[slot])]


def test_an_inactive_row_commits_nothing_in_model_or_codec(tiny_model: Any) -> None:
    ex = StepExecutor(DuplexServed(tiny_model), slots=4, chunk_samples=CHUNK, batch_invariant=False)
    a, b = (Conversation(n, CHUNK, 640, 50, text=ByteTextDecoder(257)) for n in "ab")
    ex.apply([SlotReset(0), SlotReset(1)])
    # warm both rows up so the codec has state worth protecting (the model speaks at some point)
    for seq in range(6):
        both = (PlannedRow(a, tone_chunk(seq, 220.0), seq, False), PlannedRow(b, tone_chunk(seq, 330.0), seq, False))
        ex.run(StepPlan(0, "regular", 0, both, 0.0))
    model_before = (
        ex.state.model.next_pos[1].clone(),
        ex.state.model.ring_pos[1].clone(),
        ex.state.model.feedback[1].clone(),
    )
    codec_before = codec_row(ex, 1)
    a_pos = int(ex.state.model.next_pos[0])
    result = ex.run(StepPlan(0, "regular", 0, (PlannedRow(a, tone_chunk(6, 220.0), 6, False), None), 0.0))
    assert [r.row.conversation for r in result.rows] == [a] and result.batch_rows == 2
    assert result.pcm.shape == (1, CHUNK) and result.pcm.dtype == torch.int16
    assert result.loud == [bool(result.pcm[0].any())]
    assert int(ex.state.model.next_pos[0]) == a_pos + 5, "the active row advanced"
    assert torch.equal(ex.state.model.next_pos[1], model_before[0])
    assert torch.equal(ex.state.model.ring_pos[1], model_before[1])
    assert torch.equal(ex.state.model.feedback[1], model_before[2])
    assert codec_row(ex, 1) == codec_before, "the codec's state of the inactive row is untouched"
    assert len(result.rows[0].control) == 5 and len(result.rows[0].voiced) == 5
    assert all(result.rows[0].voiced), "a -10 dBFS tone is user speech"


def test_codec_decode_with_a_mask_equals_decoding_the_active_rows_alone(tiny_model: Any) -> None:
    codec = Codec(tiny_model.cfg)
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 1024, (3, 5), generator=g)
    masked, alone = codec.new_state(4), codec.new_state(4)
    active = torch.tensor([True, False, True])
    wave = codec.decode(codes, masked, rows=slice(1, 4), active=active)
    ref0 = codec.decode(codes[0:1], alone, rows=slice(1, 2))
    ref2 = codec.decode(codes[2:3], alone, rows=slice(3, 4))
    assert torch.equal(wave[0], ref0[0]) and torch.equal(wave[2], ref2[0])
    for field in ("phase", "amp", "f0", "noise_pos"):
        assert torch.equal(getattr(masked, field), getattr(alone, field)), field
