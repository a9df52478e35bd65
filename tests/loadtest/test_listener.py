"""The latency bookkeeping on synthetic event timelines: the client's clock is the arrival times we feed
(the capture axis), so nothing here reads a wall clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from duplex.loadtest.listener import Listener, Measurement, Script, SendSchedule
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_LISTEN, FLOOR_SPEAK, FLOOR_YIELD

CHUNK_S = 0.2
FRAMES = 5  # 40 ms frames
L, S, B, Y = FLOOR_LISTEN, FLOOR_SPEAK, FLOOR_BACKCHANNEL, FLOOR_YIELD


def play(
    listener: Listener, chunks: Sequence[Sequence[int]], delay_s: float = 0.05, arrivals: Sequence[float] | None = None
) -> list[Measurement]:
    """Feed model chunk k at its live-client arrival: sent at (k+1)·chunk (once captured) + ``delay_s``."""
    out: list[Measurement] = []
    for k, controls in enumerate(chunks):
        at = arrivals[k] if arrivals is not None else (k + 1) * CHUNK_S + delay_s
        out += listener.feed(at, controls)
    return out


def silent(n: int) -> list[list[int]]:
    return [[L] * FRAMES for _ in range(n)]


def test_send_schedule_follows_the_hint_like_a_live_microphone() -> None:
    sched = SendSchedule.from_hint(send_0_us=5_000_000, ready_us=4_900_000, chunk_ms=200)
    assert sched.start_us == 4_800_000  # capture began one chunk before chunk 0 may leave
    assert [sched.capture_end_us(k) for k in range(3)] == [5_000_000, 5_200_000, 5_400_000]
    assert sched.axis_s(5_300_000) == pytest.approx(0.5)


def test_a_re_aim_moves_the_schedule_and_the_axis_takes_it_out() -> None:
    """The engine said chunks arrive 12 ms early: from chunk 3 on they are captured (and leave) 12 ms later, and
    a reply heard then is placed 12 ms earlier on the capture axis — where the user's speech is."""
    sched = SendSchedule.from_hint(send_0_us=5_000_000, ready_us=4_900_000, chunk_ms=200)
    sched.reaims.append((3, 12_000))
    assert [sched.capture_end_us(k) for k in (2, 3, 4)] == [5_400_000, 5_612_000, 5_812_000]
    assert sched.axis_s(5_300_000) == pytest.approx(0.5)
    assert sched.axis_s(5_700_000) == pytest.approx(0.888)


def test_send_schedule_without_a_hint_sends_chunk_0_now_as_a_captured_chunk() -> None:
    sched = SendSchedule.from_hint(send_0_us=None, ready_us=1_000_000, chunk_ms=80)
    assert sched.start_us == 920_000  # chunk 0 leaves at the end of its period, never at its start
    assert [sched.capture_end_us(k) for k in range(2)] == [1_000_000, 1_080_000]


def test_turn_latency_is_heard_onset_minus_captured_end_of_speech() -> None:
    listener = Listener(Script(turn_ends=(1.0,), speech_starts=(0.0, 5.0)), CHUNK_S)
    # chunk 5 arrives at 1.25 s and speaks from its third frame: heard at 1.25 + 2 × 0.04
    got = play(listener, [*silent(5), [L, L, S, S, S], [S] * FRAMES])
    assert got == [Measurement("turn", 1.0, pytest.approx(0.33))]


def test_a_late_chunk_is_heard_only_after_the_previous_one_finished_playing() -> None:
    listener = Listener(Script(turn_ends=(0.5,), speech_starts=(0.0,)), CHUNK_S)
    # chunk 0 arrives at 1.0 (plays to 1.2); chunk 1, with the onset in frame 0, arrives at 1.05
    got = play(listener, [[L] * FRAMES, [S] * FRAMES], arrivals=[1.0, 1.05])
    assert got == [Measurement("turn", 0.5, pytest.approx(0.7))]  # heard at 1.2, not at its arrival


def test_no_reply_before_the_user_speaks_again_is_a_missed_turn() -> None:
    listener = Listener(Script(turn_ends=(0.5,), speech_starts=(0.0, 1.1)), CHUNK_S)
    got = play(listener, [*silent(6), [S] * FRAMES])  # speech heard only at 1.45, after the user's 1.1 onset
    assert got == [Measurement("turn_missed", 0.5)]


def test_a_reply_after_the_window_is_a_missed_turn() -> None:
    listener = Listener(Script(turn_ends=(0.5,), speech_starts=(0.0,)), CHUNK_S)
    got = play(listener, [*silent(20), [S] * FRAMES])  # onset at 4.25 s: more than 3 s after 0.5
    assert got == [Measurement("turn_missed", 0.5)]


def test_an_onset_just_before_the_end_counts_as_taking_the_turn_at_zero_latency() -> None:
    listener = Listener(Script(turn_ends=(1.3,), speech_starts=(0.0,)), CHUNK_S)
    got = play(listener, [*silent(5), [S] * FRAMES, [S] * FRAMES])  # heard from 1.25, end at 1.3
    assert got == [Measurement("turn", 1.3, 0.0)]


def test_barge_in_latency_runs_from_the_users_onset_to_the_last_model_speech_heard() -> None:
    listener = Listener(Script(turn_ends=(0.1,), speech_starts=(0.0, 0.9)), CHUNK_S)
    # the model speaks from 0.25 (chunk 0); the user starts over it at 0.9; chunk 4 (arrives 1.05)
    # stops after two frames: speech ends at 1.05 + 0.08
    got = play(listener, [[S] * FRAMES, [S] * FRAMES, [S] * FRAMES, [S] * FRAMES, [S, S, Y, L, L]])
    assert got == [Measurement("turn", 0.1, pytest.approx(0.15)), Measurement("barge_in", 0.9, pytest.approx(0.23))]


def test_model_speech_that_goes_on_is_an_ignored_barge_in() -> None:
    listener = Listener(Script(turn_ends=(), speech_starts=(0.5,)), CHUNK_S)
    got = play(listener, [[S] * FRAMES for _ in range(14)])  # talking to 2.85 s, 2.35 s after the onset
    assert got == [Measurement("barge_in_ignored", 0.5)]


def test_user_speech_while_the_model_is_silent_is_no_barge_in() -> None:
    listener = Listener(Script(turn_ends=(), speech_starts=(0.5,)), CHUNK_S)
    assert play(listener, [[S] * FRAMES, *silent(3), [S] * FRAMES, *silent(2)]) == []


def test_a_backchannel_run_counts_once_even_across_chunks() -> None:
    listener = Listener(Script(turn_ends=(), speech_starts=(0.0,)), CHUNK_S)
    got = play(listener, [[L, L, L, B, B], [B, B, L, L, L], [L, B, L, L, L]])
    assert [m.kind for m in got] == ["backchannel", "backchannel"]
    assert got[0].at_s == pytest.approx(0.25 + 3 * 0.04)
    assert got[1].at_s == pytest.approx(0.65 + 0.04)


def test_backchannel_frames_inside_a_model_turn_are_speech() -> None:
    listener = Listener(Script(turn_ends=(0.2,), speech_starts=(0.0,)), CHUNK_S)
    got = play(listener, [[S, S, B, B, S], [B, S, L, L, L]])
    assert got == [Measurement("turn", 0.2, pytest.approx(0.05))]  # one turn, no back-channel


def test_flush_closes_only_the_windows_that_have_passed() -> None:
    listener = Listener(Script(turn_ends=(0.5, 2.0), speech_starts=(0.0, 1.0)), CHUNK_S)
    assert play(listener, silent(3)) == []
    assert listener.flush(now_s=1.5) == [Measurement("turn_missed", 0.5)]  # the user spoke again at 1.0
    assert listener.flush(now_s=2.5) == []  # the reply to 2.0 may still come


def test_script_must_be_sorted() -> None:
    with pytest.raises(ValueError, match="sorted"):
        Script(turn_ends=(2.0, 1.0), speech_starts=())
