"""The scheduler's bookkeeping, driven directly (no step thread, no gRPC): explicit arrival times stand in for
clients, and ``_pick`` is asked what it would step at a given moment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from duplex.model.codec import Codec
from duplex.serving.engine.scheduler import SEND_LEAD_S, Scheduler
from duplex.serving.engine.session import InputChunk, Session
from duplex.serving.metrics import EngineMetrics
from duplex.serving.spec import EngineSpec


@pytest.fixture
def make(tiny_model: Any) -> Iterator[Any]:
    loop = asyncio.new_event_loop()

    def build(**spec: Any) -> Scheduler:
        es = EngineSpec(host="127.0.0.1", metrics_port=0, **spec)
        return Scheduler(tiny_model, Codec(tiny_model.cfg), es, es.chunk_ms, EngineMetrics(), loop)

    yield build
    loop.close()


def session(sched: Scheduler, name: str) -> Session:
    s = Session(name, sched.chunk_samples, sched.frame_samples, max_send_backlog=20)
    assert sched.admit(s)
    return s


def sample(sched: Scheduler, name: str, **labels: str) -> float:
    return sched.metrics.registry.get_sample_value(name, labels) or 0.0


def chunk(sched: Scheduler, s: Session, seq: int, at: float) -> None:
    c = InputChunk(seq, torch.zeros(sched.chunk_samples), 0, at, sched.wall_us(at))
    assert sched.submit(s, c)


def test_phase_hint_spreads_new_sessions_evenly_over_the_cohorts(make: Any) -> None:
    sched: Scheduler = make(max_sessions=8, cohorts=4)
    now = time.monotonic()
    sessions = [session(sched, f"s{i}") for i in range(8)]
    arrivals = [sched.steer(s, not_before=now) for s in sessions]
    assert [c.reserved for c in sched.cohorts] == [2, 2, 2, 2]
    for s, at in zip(sessions, arrivals, strict=True):
        assert at is not None and now <= at < now + sched.period + SEND_LEAD_S
        cohort = sched.cohorts[s.reserved or 0]
        # due just before that cohort's tick
        off = ((at + SEND_LEAD_S - sched.t0) - cohort.phase_s) % sched.period
        assert min(off, sched.period - off) < 1e-6
    assert sched.steer(sessions[0], not_before=now) is None, "one reservation per session"
    # the first chunk arriving at the hinted time places the session in its reserved cohort
    for s, at in zip(sessions, arrivals, strict=True):
        reserved = s.reserved
        chunk(sched, s, 0, at)
        sched._housekeeping(at, [])
        assert s.cohort == reserved and s.reserved is None
    assert [c.reserved for c in sched.cohorts] == [0, 0, 0, 0]
    assert [len(c.members) for c in sched.cohorts] == [2, 2, 2, 2]
    assert sample(sched, "duplex_engine_placements_total", how="hint") == 8


def test_a_session_that_ignores_the_hint_is_placed_by_its_arrival(make: Any) -> None:
    sched: Scheduler = make(max_sessions=8, cohorts=4)
    s = session(sched, "free")
    at = sched.steer(s, not_before=time.monotonic())
    assert at is not None
    reserved = sched.cohorts[s.reserved or 0]
    off = at + sched.period / 2  # half a period off: the reserved cohort would make it wait ~P/2
    chunk(sched, s, 0, off)
    sched._housekeeping(off, [])
    assert s.cohort is not None and s.cohort != reserved.index
    assert sched._wait_for(sched.cohorts[s.cohort], s.arrival_phase_s) <= sched.period / 4
    assert reserved.reserved == 0, "the unused reservation is released"
    assert sample(sched, "duplex_engine_placements_total", how="arrival") == 1


def test_leaving_before_any_audio_releases_the_reservation(make: Any) -> None:
    sched: Scheduler = make(max_sessions=4, cohorts=4)
    s = session(sched, "gone")
    assert sched.steer(s, not_before=time.monotonic()) is not None
    sched.leave(s)
    sched._housekeeping(time.monotonic(), [])
    assert sum(c.reserved for c in sched.cohorts) == 0 and sum(c.room for c in sched.cohorts) == 4


def test_a_session_that_ends_without_audio_is_finished(make: Any) -> None:
    sched: Scheduler = make(max_sessions=4, cohorts=2)
    s = session(sched, "mute")
    assert sched.steer(s, not_before=time.monotonic()) is not None
    sched.end(s)
    delivery: list[Any] = []
    sched._housekeeping(time.monotonic(), delivery)
    assert delivery == [(s, [], True)], "closed with OK at once"
    assert sched.active_count() == 0 and sum(c.reserved for c in sched.cohorts) == 0


def test_a_burst_does_not_leave_a_session_ahead_for_good(make: Any) -> None:
    """After a burst (two chunks at once) is caught up, the member is back on its phase: the next regular
    step must wait for its chunk instead of treating it as already served (which made it miss every step
    after, each time caught up alone in an extra step)."""
    sched: Scheduler = make(max_sessions=2, cohorts=1, split_after_ms=0)
    a, b = session(sched, "a"), session(sched, "b")
    t = time.monotonic()
    chunk(sched, a, 0, t)
    chunk(sched, b, 0, t)
    sched._housekeeping(t, [])
    c = sched.cohorts[0]
    job, _ = sched._pick(c.due - 0.01)
    assert job is not None and job.regular and len(job.rows) == 2
    # `a` sends two chunks at once just before the next tick, `b` one
    tick = c.due
    chunk(sched, a, 1, tick - 0.010)
    chunk(sched, a, 2, tick - 0.010)
    chunk(sched, b, 1, tick - 0.005)
    job, _ = sched._pick(tick - 0.004)
    assert job is not None and job.regular, "everyone is in: the regular step"
    job, _ = sched._pick(tick - 0.003)
    assert job is not None and not job.regular, "the second chunk is caught up at once"
    assert [r.session for r in job.rows if r is not None] == [a] and len(job.rows) == 1, \
        "a catch-up step computes only the rows it needs"
    # the next tick: `b` is in, `a` not yet — the cohort waits for `a` (until the deadline)
    tick = c.due
    chunk(sched, b, 2, tick - 0.005)
    job, wake = sched._pick(tick - 0.004)
    assert job is None, "stepped without a member that owes this tick's chunk"
    assert wake == pytest.approx(tick + sched.grace)
    chunk(sched, a, 3, tick - 0.002)
    job, _ = sched._pick(tick - 0.001)
    assert job is not None and job.regular and all(r is not None for r in job.rows)
    assert sample(sched, "duplex_engine_steps_total", kind="regular") == 3
    assert sample(sched, "duplex_engine_steps_total", kind="catchup") == 1
    assert sample(sched, "duplex_engine_placements_total", how="no_hint") == 2
