"""A steered client re-aims its capture phase from its chunks' aim errors (``client.PhaseAim``): the rule on
typed outputs, the recording's time axis with re-aims taken out, and two real sessions of one cohort where
one sends late — it moves earlier, and the other stops waiting for it."""

from __future__ import annotations

import asyncio
import copy
import statistics
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from duplex.serving import client
from duplex.serving.spec import EngineSpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import API_KEY, AUTH, Stack, start_stack, stop_stack

CHUNK = 3200


def out(seq: int, error_ms: float, substituted: bool = False) -> pb.ModelAudio:
    """An output whose chunk arrived ``error_ms`` off its cohort's aim."""
    timing = pb.ChunkTiming(seq=seq, aim_error_ms=error_ms, substituted=substituted)
    return pb.ModelAudio(seq=seq, timing=timing)


def test_a_window_moves_the_capture_by_minus_its_median_error() -> None:
    aim = client.PhaseAim()
    errors = [-14.0, -9.0, 40.0, -12.5]  # one chunk held up on the way does not decide it
    assert [aim.observe(out(i, e), sent=i + 1) for i, e in enumerate(errors)] == [0, 0, 0, 0]
    assert aim.observe(out(4, -11.0), sent=5) == 11_000  # early: capture later
    # outputs of chunks sent on the old aim say nothing about the new one
    assert [aim.observe(out(5, -50.0), sent=6) for _ in range(10)] == [0] * 10
    late = [aim.observe(out(i, 8.0), sent=i) for i in range(6, 11)]
    assert late == [0, 0, 0, 0, -8_000]  # late: capture earlier
    # each move starts after the chunk being captured when it was decided
    assert aim.axis.reaims == [(6, 11_000), (11, -8_000)]


def test_small_errors_and_substituted_chunks_never_move_it() -> None:
    aim = client.PhaseAim()
    small = [aim.observe(out(i, e), i) for i, e in enumerate([-20.0, 2.9, -2.0, 2.5, 30.0])]
    assert small == [0] * 5  # median 2.5 ms: the burst's own spread, not a phase error
    subst = [aim.observe(out(i, 0.0, substituted=i % 2 == 0), i) for i in range(5, 11)]
    assert subst == [0] * 6 and len(aim.errors_ms) == 3  # silence stood in: no arrival to judge
    assert aim.axis.reaims == []


def test_the_recording_axis_takes_re_aims_out() -> None:
    conv = client.Conversation(start_us=1_000_000, chunk_us=200_000)
    conv.reaims = [(3, 20_000), (5, -5_000)]
    assert [conv.capture_end_us(k) for k in (0, 2, 3, 4, 5)] == [1_200_000, 1_600_000, 1_820_000, 2_020_000, 2_215_000]
    t = conv.start_us
    # before chunk 3's capture would have begun nothing moved; the 20 ms never captured map to its start, then
    # the axis is 20 ms behind the clock; from chunk 5's (earlier) capture start 15 ms
    assert conv.axis_us(t + 599_999) == 599_999
    assert conv.axis_us(t + 610_000) == 600_000
    assert conv.axis_us(t + 700_000) == 680_000
    assert conv.axis_us(t + 1_020_000) == 1_000_000
    assert conv.axis_us(t + 1_020_001) == 1_005_001  # captured twice: the axis jumps ahead
    for k in range(8):  # every chunk's capture end lies where its samples end on the axis
        assert conv.axis_us(conv.capture_end_us(k)) == (k + 1) * 200_000


@pytest.fixture(scope="module")
def one_cohort(tiny_model: Any) -> Iterator[Stack]:
    """Two slots in one cohort, no split steps: a cohort steps once both members are in."""
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=2, cohorts=1, split_after_ms=0)
    s = start_stack(spec, copy.deepcopy(tiny_model), keys=[API_KEY])
    yield s
    stop_stack(s)


async def test_a_late_member_moves_earlier_and_its_cohort_stops_waiting(one_cohort: Stack) -> None:
    """B follows the hint 25 ms late, so every step waits for it: A's chunks wait ~25 ms. B re-aims earlier by
    its error and A's chunks stop waiting for it; every chunk still goes out only once captured."""
    chunks = client.split_chunks(np.zeros(16 * CHUNK, np.int16), CHUNK)
    async with grpc.aio.insecure_channel(one_cohort.front_addr) as ch:
        a_conv = asyncio.create_task(client.converse(ch, chunks, metadata=AUTH))
        b_conv = asyncio.create_task(client.converse(ch, chunks, metadata=AUTH, start_delay_s=0.025))
        a, b = await a_conv, await b_conv
    assert a.code == b.code == grpc.StatusCode.OK, (a.details, b.details)
    assert {r.event.audio.timing.cohort for r in a.of("audio") + b.of("audio")} == {0}
    assert b.reaims and b.reaims[0][1] < 0, f"B came late to every step and never moved: {b.reaims}"
    moved_from = b.reaims[0][0]

    def split(conv: client.Conversation, value: str) -> tuple[list[float], list[float]]:
        timings = [r.event.audio.timing for r in conv.of("audio")]
        return [getattr(t, value) for t in timings if t.seq < moved_from], [
            getattr(t, value) for t in timings if t.seq >= moved_from
        ]

    b_before, b_after = split(b, "aim_error_ms")
    a_before, a_after = split(a, "queue_wait_ms")
    assert b_before and b_after and a_before and a_after
    assert abs(statistics.median(b_after)) < statistics.median(b_before) / 2, (b_before, b_after, b.reaims)
    assert statistics.median(a_after) < statistics.median(a_before) / 2, (a_before, a_after)
    for conv in (a, b):
        assert all(conv.sent_us[k] >= conv.capture_end_us(k) for k in conv.sent_us)
