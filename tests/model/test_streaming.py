"""Streaming ``step`` against the full-sequence teacher-forced ``forward``; slots, holes, bounds, bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from duplex.model.config import ModelConfig, ModelError
from duplex.model.model import DuplexModel, StepOutput, decide, delay
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_SPEAK

Speechy = Callable[..., torch.Tensor]


def run_stream(model: DuplexModel, audio: torch.Tensor, chunk_frames: int) -> StepOutput:
    state = model.new_state(audio.shape[0])
    S = model.cfg.frame_samples * chunk_frames
    outs = [model.step(state, audio[:, i : i + S]) for i in range(0, audio.shape[1], S)]
    return StepOutput(*(torch.cat([getattr(o, f) for o in outs], 1) for f in StepOutput.__dataclass_fields__))


@pytest.mark.parametrize("chunk_frames", [2, 5, 10])  # 80, 200 and 400 ms chunks (400 ms = two sub-steps)
def test_step_equals_teacher_forced_forward(
    tiny_model: DuplexModel, tiny: ModelConfig, chunk_frames: int, speechy: Speechy
) -> None:
    frames = tiny.window + 60  # longer than the attention window: ring eviction is exercised
    audio = speechy(2, frames, tiny)
    stream = run_stream(tiny_model, audio, chunk_frames)
    D = tiny.feedback_delay_frames
    with torch.no_grad():
        full = tiny_model(
            audio,
            delay(stream.audio_codes, D, tiny.audio_codes),
            delay(stream.text_tokens, D, tiny.pad_token),
            delay(stream.control, D, tiny.control_classes),
        )
    torch.testing.assert_close(full.control.float().softmax(-1), stream.control_probs, rtol=1e-4, atol=1e-5)
    audio, text, control = decide(tiny, full.audio, full.text, full.control)
    assert torch.equal(audio, stream.audio_codes)
    assert torch.equal(text, stream.text_tokens)
    assert torch.equal(control, stream.control)


def test_audio_is_gated_by_the_floor_decision(tiny: ModelConfig) -> None:
    g = torch.Generator().manual_seed(0)
    audio_logits = torch.randn(2, 50, tiny.audio_codes, generator=g)
    audio_logits[..., 0] += 100.0  # the audio head alone would always say "silence"
    control = torch.randn(2, 50, tiny.control_classes, generator=g)
    audio, _, ctrl = decide(tiny, audio_logits, torch.randn(2, 50, tiny.text_vocab), control)
    speaking = (ctrl == FLOOR_SPEAK) | (ctrl == FLOOR_BACKCHANNEL)
    assert speaking.any() and (~speaking).any()
    assert (audio[speaking] >= tiny.silent_codes).all()
    assert (audio[~speaking] == 0).all()


def test_text_and_video_inputs_reach_the_output(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    audio = speechy(1, 5, tiny)
    base = tiny_model.step(tiny_model.new_state(1), audio).control_probs
    text = torch.full((1, 5, tiny.text_in_slots), tiny.pad_token)
    text[0, 0, :3] = torch.tensor(list(b"hi!"))
    with_text = tiny_model.step(tiny_model.new_state(1), audio, text_in=text).control_probs
    video = torch.rand(1, 3, tiny.video_size, tiny.video_size)
    with_video = tiny_model.step(
        tiny_model.new_state(1), audio, video=video, video_rows=torch.tensor([0])
    ).control_probs
    assert not torch.allclose(base, with_text)
    assert not torch.allclose(base, with_video)
    # PAD-only text is no text at all
    pad = torch.full((1, 5, tiny.text_in_slots), tiny.pad_token)
    torch.testing.assert_close(tiny_model.step(tiny_model.new_state(1), audio, text_in=pad).control_probs, base)


def test_join_and_leave_do_not_change_other_sessions(
    tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy
) -> None:
    chunks, S = 12, tiny.frame_samples * 5
    audio = speechy(3, chunks * 5, tiny, seed=7)
    alone = [run_stream(tiny_model, audio[i : i + 1], 5) for i in range(3)]

    state = tiny_model.new_state(4)
    got: dict[int, list[StepOutput]] = {0: [], 1: [], 2: []}
    slot_of = {0: 0}  # session → slot; sessions stay packed at the front
    progress = {0: 0, 1: 0, 2: 0}
    for tick in range(chunks + 8):
        if tick == 3:  # session 1 joins mid-run
            slot_of[1] = len(slot_of)
            state.reset(slot_of[1])
        if tick == 5:
            slot_of[2] = len(slot_of)
            state.reset(slot_of[2])
        live = sorted(slot_of, key=slot_of.get)  # type: ignore[arg-type]
        batch = torch.stack([audio[s, progress[s] * S : (progress[s] + 1) * S] for s in live])
        out = tiny_model.step(state, batch)
        for row, s in enumerate(live):
            got[s].append(StepOutput(*(getattr(out, f)[row : row + 1] for f in StepOutput.__dataclass_fields__)))
            progress[s] += 1
        for s in list(slot_of):
            if progress[s] == chunks:  # leaves: swap-remove the last slot into its place
                last = max(slot_of.values())
                mover = next(k for k, v in slot_of.items() if v == last)
                state.move(last, slot_of[s])
                slot_of[mover] = slot_of[s]
                del slot_of[s]
        if not slot_of:
            break
    for s in range(3):
        probs = torch.cat([o.control_probs for o in got[s]], 1)
        torch.testing.assert_close(probs, alone[s].control_probs, rtol=1e-4, atol=1e-5)
        assert torch.equal(torch.cat([o.audio_codes for o in got[s]], 1), alone[s].audio_codes)


def test_inactive_rows_are_not_committed(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    """A contiguous block is stepped while one member's chunk is late: the late one is unaffected."""
    chunks, S = 8, tiny.frame_samples * 5
    audio = speechy(2, chunks * 5, tiny, seed=3)
    ref = run_stream(tiny_model, audio[1:2], 5)
    state = tiny_model.new_state(5)
    pattern = [True, False, False, True, True, False, True, True, True, False, True, True, True]
    done, outs = 0, []
    for tick, present in enumerate(pattern):
        if done == chunks:
            break
        batch = torch.stack(
            [audio[0, (tick % chunks) * S : (tick % chunks + 1) * S], audio[1, done * S : (done + 1) * S]]
        )
        out = tiny_model.step(state, batch, rows=slice(2, 4), active=torch.tensor([True, present]))
        if present:
            outs.append(out.control_probs[1:2])
            done += 1
    assert done == chunks
    torch.testing.assert_close(torch.cat(outs, 1), ref.control_probs, rtol=1e-4, atol=1e-5)


def test_memory_is_bounded(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    state = tiny_model.new_state(1)
    before = state.nbytes_per_slot()
    chunk = speechy(1, 5, tiny)
    for _ in range(2 * tiny.cache_len // 5):
        tiny_model.step(state, chunk)
    assert state.nbytes_per_slot() == before
    assert int(state.next_pos[0]) == 2 * tiny.cache_len // 5 * 5
    assert int((state.ring_pos[0] >= 0).sum()) == tiny.cache_len  # full ring, never larger


def test_late_positions_keep_precision(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    """An hour into a session (90 000 frames) the model still computes what it computes at the start."""
    audio = speechy(1, 10, tiny)
    fresh = run_stream(tiny_model, audio, 5)
    state = tiny_model.new_state(1)
    state.next_pos[0] = 90_000  # same inputs, positions shifted by an hour: attention is relative
    late = [tiny_model.step(state, audio[:, i : i + 3200]) for i in range(0, audio.shape[1], 3200)]
    torch.testing.assert_close(torch.cat([o.control_probs for o in late], 1), fresh.control_probs, rtol=1e-3, atol=1e-4)


def test_bad_inputs_name_the_problem(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    state = tiny_model.new_state(2)
    good = speechy(2, 5, tiny)
    with pytest.raises(ModelError, match="not a multiple of the frame size 640"):
        tiny_model.step(state, good[:, :1000])
    nan = good.clone()
    nan[1, 17] = float("nan")
    with pytest.raises(ModelError, match=r"NaN or Inf \(session rows \[1\]\)"):
        tiny_model.step(state, nan)
    inf = good.clone()
    inf[0, 3] = float("inf")
    with pytest.raises(ModelError, match="NaN or Inf"):
        tiny_model.step(state, inf)
    with pytest.raises(ModelError, match="state has 2 slots"):
        tiny_model.step(state, speechy(3, 5, tiny))
    with pytest.raises(ModelError, match="rows"):
        tiny_model.step(state, good, rows=slice(1, 2))
    with pytest.raises(ModelError, match="batch, samples"):
        tiny_model.step(state, good[0])
    assert int(state.next_pos.sum()) == 0  # nothing was committed by the rejected calls


def test_bfloat16_path_steps(tiny_model: DuplexModel, tiny: ModelConfig, speechy: Speechy) -> None:
    """The dtype path GPUs use (bfloat16 weights, caches and activations) runs the same code on CPU."""
    import copy

    bf = copy.deepcopy(tiny_model).to(torch.bfloat16)
    state = bf.new_state(2)
    assert state.k[0].dtype == torch.bfloat16
    audio = speechy(2, 10, tiny)
    outs = [bf.step(state, audio[:, i : i + 3200].to(torch.bfloat16)) for i in (0, 3200)]
    ref = run_stream(tiny_model, audio, 5)
    probs = torch.cat([o.control_probs for o in outs], 1)
    assert torch.isfinite(probs).all()
    # same inputs in the first chunk: only bf16 rounding apart (later chunks feed back diverging decisions);
    # a near-tie of the top-2 router scores can send a single frame to another expert under that rounding
    per_frame = (probs[:, :5] - ref.control_probs[:, :5]).abs().amax(-1)
    assert per_frame.median() < 0.01
    assert per_frame.max() < 0.15
