"""The step planner through its public API, on a fake clock: explicit arrival times stand in for clients and
``next_step(now, load)`` is asked what it would step at a given moment. No model, no thread, no gRPC. What it
decides is counted as the scheduler counts it (``count_housekeeping``, ``count_step``)."""

from __future__ import annotations

from typing import Any

import pytest

from duplex.model.family_duplex import ByteTextDecoder
from duplex.serving.engine.planner import (
    SEND_LEAD_S,
    Housekeeping,
    PlannedPiece,
    SlotDropPrefill,
    SlotEndInput,
    SlotMove,
    SlotReset,
    StepPlan,
    StepPlanner,
)
from duplex.serving.engine.scheduler import count_housekeeping, count_step
from duplex.serving.engine.session import Conversation, InputChunk, SlotSession
from duplex.serving.metrics import EngineMetrics
from duplex.serving.spec import EngineSpec

T0 = 100.0
"""The fake monotonic time the planner's phases count from."""
CHUNK_SAMPLES = 3200
SILENCE = bytes(2 * CHUNK_SAMPLES)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def at(self, t: float) -> float:
        self.t = t
        return t


class CountedPlanner(StepPlanner):
    """The planner whose decisions are counted into ``metrics`` the way the scheduler counts them."""

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec, spec.chunk_ms / 1000.0, T0, text_tokens_per_step=0)
        self.metrics = EngineMetrics()

    def housekeeping(self, now: float) -> Housekeeping:
        chores = super().housekeeping(now)
        count_housekeeping(self.metrics, chores)
        return chores

    def next_step(self, now: float, load: float) -> tuple[StepPlan | None, float | None]:
        plan, wake = super().next_step(now, load)
        count_step(self.metrics, plan)
        return plan, wake


def planner(**spec: Any) -> CountedPlanner:
    return CountedPlanner(EngineSpec(host="127.0.0.1", metrics_port=0, **spec))


def session(name: str) -> SlotSession:
    return Conversation(name, CHUNK_SAMPLES, 640, max_send_backlog=20, text=ByteTextDecoder(257)).slot_session


def chunk(p: StepPlanner, s: SlotSession, seq: int, at: float) -> None:
    assert p.add_chunk(s, InputChunk(seq, SILENCE, 0, at, 0))


def sample(p: CountedPlanner, name: str, **labels: str) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


def step(p: StepPlanner, now: float, load: float = 0.0) -> StepPlan:
    plan, _ = p.next_step(now, load)
    assert plan is not None, f"nothing planned at {now - T0:.3f}"
    return plan


def members(plan: StepPlan) -> list[SlotSession]:
    return [r.conversation.slot_session for r in plan.rows if r is not None]


def test_phase_hint_spreads_new_sessions_evenly_over_the_cohorts() -> None:
    p = planner(max_sessions=8, cohorts=4)
    now = T0 + 0.0123
    sessions = [session(f"s{i}") for i in range(8)]
    arrivals = [p.reserve(s, not_before=now) for s in sessions]
    assert [c.reserved for c in p.cohorts] == [2, 2, 2, 2]
    for s, at in zip(sessions, arrivals, strict=True):
        assert at is not None and now <= at < now + p.period + SEND_LEAD_S
        cohort = p.cohorts[s.reserved or 0]
        # due just before that cohort's tick
        off = ((at + SEND_LEAD_S - p.t0) - cohort.phase_s) % p.period
        assert min(off, p.period - off) < 1e-6
    assert p.reserve(sessions[0], not_before=now) is None, "one reservation per session"
    # the first chunk arriving at the hinted time places the session in its reserved cohort
    for s, at in zip(sessions, arrivals, strict=True):
        reserved = s.reserved
        chunk(p, s, 0, at)
        chores = p.housekeeping(at)
        assert s.cohort == reserved and s.reserved is None
        assert chores.slot_ops == [SlotReset(s.slot)], "a placed session starts from a fresh slot"
    assert [c.reserved for c in p.cohorts] == [0, 0, 0, 0]
    assert [len(c.members) for c in p.cohorts] == [2, 2, 2, 2]
    assert sample(p, "duplex_engine_placements_total", how="hint") == 8


def test_a_session_that_ignores_the_hint_is_placed_by_its_arrival() -> None:
    p = planner(max_sessions=8, cohorts=4)
    s = session("free")
    at = p.reserve(s, not_before=T0 + 0.001)
    assert at is not None
    reserved = p.cohorts[s.reserved or 0]
    off = at + p.period / 2  # half a period off: the reserved cohort would make it wait ~P/2
    chunk(p, s, 0, off)
    p.housekeeping(off)
    assert s.cohort is not None and s.cohort != reserved.index
    assert p.wait_for(p.cohorts[s.cohort], s.arrival_phase_s) <= p.period / 4
    assert reserved.reserved == 0, "the unused reservation is released"
    assert sample(p, "duplex_engine_placements_total", how="arrival") == 1


def test_a_steered_session_off_its_hint_by_the_joining_jitter_keeps_its_reserved_cohort() -> None:
    """The hint aims SEND_LEAD_S before the tick; a first chunk up to P/(2C) off it (but not earlier than the
    previous tick) or up to the grace after the tick is placed by the hint — the jitter of sessions joining
    together must not send a session a cohort behind for good."""
    p = planner(max_sessions=8, cohorts=4)
    spacing = p.period / 4
    for name, offset in (("early", SEND_LEAD_S - spacing + 0.002), ("late", SEND_LEAD_S + p.grace - 0.002)):
        s = session(name)
        at = p.reserve(s, not_before=T0 + 0.001)
        assert at is not None
        reserved = s.reserved
        chunk(p, s, 0, at + offset)
        p.housekeeping(at + offset)
        assert s.cohort == reserved, name
    assert sample(p, "duplex_engine_placements_total", how="hint") == 2
    past = session("past the grace")
    at = p.reserve(past, not_before=T0 + 0.001)
    assert at is not None
    reserved = past.reserved
    chunk(p, past, 0, at + SEND_LEAD_S + p.grace + 0.005)
    p.housekeeping(at + SEND_LEAD_S + p.grace + 0.005)
    assert past.cohort is not None and past.cohort != reserved, "after the deadline the next tick is sooner"


def test_each_planned_chunk_carries_its_error_against_its_cohorts_aim() -> None:
    """The error a steered client re-aims by: a chunk at the hinted time is on aim, one 12 ms earlier -12 ms;
    on the period's circle, so a chunk just after the previous tick's aim reads as late, not 190 ms early."""
    p = planner(max_sessions=4, cohorts=1)
    on, early = session("on"), session("early")
    at = p.reserve(on, not_before=T0 + 0.001)
    assert at is not None and p.reserve(early, not_before=T0 + 0.001) == at
    for s, t in ((on, at), (early, at - 0.012)):
        chunk(p, s, 0, t)
        p.housekeeping(t)
    plan = step(p, at)
    errors = {r.conversation.slot_session.conversation.id: r.aim_error_s for r in plan.rows if r is not None}
    assert errors == {"on": pytest.approx(0.0, abs=1e-9), "early": pytest.approx(-0.012)}
    assert p.aim_error(p.cohorts[0], at + 0.010) == pytest.approx(0.010)
    assert p.aim_error(p.cohorts[0], at + p.period - 0.010) == pytest.approx(-0.010)


def test_leaving_before_any_audio_releases_the_reservation() -> None:
    p = planner(max_sessions=4, cohorts=4)
    s = session("gone")
    assert p.reserve(s, not_before=T0) is not None
    p.leave(s)
    p.housekeeping(T0 + 0.01)
    assert sum(c.reserved for c in p.cohorts) == 0 and sum(c.room for c in p.cohorts) == 4


def test_a_session_that_ends_without_audio_is_finished() -> None:
    p = planner(max_sessions=4, cohorts=2)
    s = session("mute")
    assert p.reserve(s, not_before=T0) is not None
    p.end(s)
    chores = p.housekeeping(T0 + 0.01)
    assert chores.finished == [s.conversation], "closed with OK at once"
    assert p.housekeeping(T0 + 0.02).finished == [], "finished once"
    assert sum(c.reserved for c in p.cohorts) == 0


def test_a_leaving_member_is_swap_removed_and_its_slot_reused() -> None:
    p = planner(max_sessions=4, cohorts=1, split_after_ms=0)
    a, b, c = session("a"), session("b"), session("c")
    for s in (a, b, c):
        chunk(p, s, 0, T0 + 0.19)
    p.housekeeping(T0 + 0.19)
    assert (a.slot, b.slot, c.slot) == (0, 1, 2)
    p.leave(a)
    chores = p.housekeeping(T0 + 0.191)
    assert chores.slot_ops == [SlotMove(2, 0)], "the block's last member fills the hole"
    assert (c.slot, b.slot, a.slot) == (0, 1, -1) and p.placed_count() == 2
    assert not p.add_chunk(a, InputChunk(1, SILENCE, 0, T0 + 0.2, 0)), "left: dropped"


def test_a_late_chunk_misses_the_deadline_step_and_is_caught_up_alone() -> None:
    p = planner(max_sessions=4, cohorts=1, split_after_ms=0)
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.195)
    chunk(p, b, 0, T0 + 0.196)
    p.housekeeping(T0 + 0.196)
    assert step(p, T0 + 0.197).kind == "regular"
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.005)
    plan, wake = p.next_step(tick - 0.004, 0.0)
    assert plan is None and wake == pytest.approx(tick + p.grace), "waits for b until the deadline"
    plan = step(p, tick + p.grace)
    assert plan.kind == "regular" and members(plan) == [a] and plan.rows[1] is None, "b's row is inactive"
    assert plan.first_slot == 0 and len(plan.rows) == 2
    assert b.owed == 1
    chunk(p, b, 1, tick + 0.030)
    plan = step(p, tick + 0.031)
    assert plan.kind == "catchup" and members(plan) == [b]
    assert plan.first_slot == b.slot and len(plan.rows) == 1, "only the rows it needs"
    row = plan.rows[0]
    assert row is not None and row.late and row.chunk is not None and row.seq == 1
    assert b.owed == 0, "caught up: back on its phase"
    assert sample(p, "duplex_engine_steps_total", kind="catchup") == 1


def test_a_lost_chunk_is_replaced_by_silence_and_dropped_when_it_comes() -> None:
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0, lost_after_chunks=2)
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.195)
    chunk(p, b, 0, T0 + 0.196)
    p.housekeeping(T0 + 0.196)
    step(p, T0 + 0.197)
    c = p.cohorts[0]
    # a keeps sending, b stalls
    substituted: list[int] = []
    for seq in range(1, 5):
        tick = c.due
        chunk(p, a, seq, tick - 0.002)
        if seq == 1:
            assert p.next_step(tick - 0.001, 0.0)[0] is None, "the cohort waits for b until its deadline"
            plan = step(p, tick + p.grace)
        else:  # b missed the last regular step and sent nothing since: the cohort no longer waits for it
            plan = step(p, tick - 0.001)
        assert plan.kind == "regular" and members(plan)[0] is a
        row = plan.rows[1]
        if row is not None:
            assert row.chunk is None and row.late, "silence stands in for b's chunk"
            substituted.append(row.seq)
    assert substituted == [1, 2], "b owed more than lost_after_chunks=2 from the 3rd missed step on"
    # b's real chunks come at last: the substituted ones are dropped, the next one is taken
    assert not p.add_chunk(b, InputChunk(1, SILENCE, 0, c.due - 0.01, 0))
    assert not p.add_chunk(b, InputChunk(2, SILENCE, 0, c.due - 0.01, 0))
    chunk(p, b, 3, c.due - 0.01)
    plan = step(p, c.due - 0.009)
    assert plan.kind == "catchup" and members(plan) == [b], "b is behind: its chunk is caught up at once"
    row = plan.rows[0]
    assert row is not None and row.chunk is not None and row.seq == 3 and row.late


def test_a_burst_after_a_stall_is_caught_up_at_once() -> None:
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0)
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.195)
    chunk(p, b, 0, T0 + 0.196)
    p.housekeeping(T0 + 0.196)
    step(p, T0 + 0.197)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.002)
    step(p, tick + p.grace)  # b missed it
    # b's stalled chunk and the next one arrive together
    tick = c.due
    chunk(p, b, 1, tick - 0.004)
    chunk(p, b, 2, tick - 0.004)
    chunk(p, a, 2, tick - 0.003)
    kinds = []
    for t in (tick - 0.002, tick - 0.001):
        plan = step(p, t)
        kinds.append((plan.kind, [r.seq if r else None for r in plan.rows]))
    assert ("regular", [2, 1]) in kinds or ("catchup", [1]) in kinds
    assert sorted(r for _, rows in kinds for r in rows if r is not None) == [1, 2, 2]
    assert not b.pending and b.owed == 0 and p.next_step(tick, 0.0)[0] is None, "burst caught up, back on phase"


def test_a_burst_does_not_leave_a_session_ahead_for_good() -> None:
    """After a burst (two chunks at once) is caught up, the member is back on its phase: the next regular
    step must wait for its chunk instead of treating it as already served (which made it miss every step
    after, each time caught up alone in an extra step)."""
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0)
    a, b = session("a"), session("b")
    t = T0 + 0.05
    chunk(p, a, 0, t)
    chunk(p, b, 0, t)
    p.housekeeping(t)
    c = p.cohorts[0]
    plan = step(p, c.due - 0.01)
    assert plan.kind == "regular" and len(plan.rows) == 2
    # `a` sends two chunks at once just before the next tick, `b` one
    tick = c.due
    chunk(p, a, 1, tick - 0.010)
    chunk(p, a, 2, tick - 0.010)
    chunk(p, b, 1, tick - 0.005)
    assert step(p, tick - 0.004).kind == "regular", "everyone is in: the regular step"
    plan = step(p, tick - 0.003)
    assert plan.kind == "catchup", "the second chunk is caught up at once"
    assert members(plan) == [a] and len(plan.rows) == 1, "a catch-up step computes only the rows it needs"
    # the next tick: `b` is in, `a` not yet — the cohort waits for `a` (until the deadline)
    tick = c.due
    chunk(p, b, 2, tick - 0.005)
    plan, wake = p.next_step(tick - 0.004, 0.0)
    assert plan is None, "stepped without a member that owes this tick's chunk"
    assert wake == pytest.approx(tick + p.grace)
    chunk(p, a, 3, tick - 0.002)
    plan = step(p, tick - 0.001)
    assert plan.kind == "regular" and all(r is not None for r in plan.rows)
    assert sample(p, "duplex_engine_steps_total", kind="regular") == 3
    assert sample(p, "duplex_engine_steps_total", kind="catchup") == 1
    assert sample(p, "duplex_engine_placements_total", how="no_hint") == 2


def test_split_step_at_low_load_only() -> None:
    p = planner(max_sessions=2, cohorts=1, split_after_ms=8)
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.195)
    chunk(p, b, 0, T0 + 0.196)
    p.housekeeping(T0 + 0.196)
    step(p, T0 + 0.197)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.050)
    plan, wake = p.next_step(tick - 0.045, load=0.0)
    assert plan is None and wake == pytest.approx(tick - 0.042), "a waits split_after_ms first"
    plan, wake = p.next_step(tick - 0.041, load=0.5)
    assert plan is None and wake == pytest.approx(tick + p.grace), "busy: no split, wait for the deadline"
    plan = step(p, tick - 0.040, load=0.1)
    assert plan.kind == "split" and members(plan) == [a] and len(plan.rows) == 1
    assert a.owed == -1, "ahead for this tick"
    chunk(p, b, 1, tick - 0.002)
    plan = step(p, tick - 0.001)
    assert plan.kind == "regular" and members(plan) == [b], "a, already served, does not hold it back"
    assert a.owed == 0 and b.owed == 0
    assert sample(p, "duplex_engine_steps_total", kind="split") == 1


def test_a_session_whose_chunks_keep_waiting_migrates_to_a_better_phased_cohort() -> None:
    p = planner(max_sessions=8, cohorts=4, split_after_ms=0)  # ticks at phases 0, 50, 100, 150 ms
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.197)
    chunk(p, b, 0, T0 + 0.197)
    p.housekeeping(T0 + 0.197)
    assert a.cohort == b.cohort == 0
    step(p, T0 + 0.1975)
    # b's clock jumps: its chunks now arrive 100 ms before cohort 0's tick and wait for a's
    chunk(p, b, 1, T0 + 0.3)
    plan, _ = p.next_step(T0 + 0.3, 0.0)
    assert plan is None
    chunk(p, a, 1, T0 + 0.397)
    assert members(step(p, T0 + 0.397)) == [a, b]
    assert b.wait_ema_s > p.period / (2 * len(p.cohorts))
    chunk(p, b, 2, T0 + 0.495)
    chores = p.housekeeping(T0 + 0.495)
    assert b.cohort == 2 and b.slot == p.cohorts[2].start, "moved to the cohort ticking at its arrival phase"
    assert chores.slot_ops == [SlotMove(1, p.cohorts[2].start)], "its state moves with it"
    assert a.cohort == 0 and a.slot == 0
    assert sample(p, "duplex_engine_cohort_migrations_total") == 1
    plan = step(p, T0 + 0.496)
    assert plan.cohort == 2 and members(plan) == [b], "alone in its new cohort: stepped at once"


def settled_pair(p: StepPlanner) -> tuple[SlotSession, SlotSession]:
    """Two members of cohort 0 that have had one regular step together (both on their phase, owing nothing)."""
    a, b = session("a"), session("b")
    chunk(p, a, 0, T0 + 0.195)
    chunk(p, b, 0, T0 + 0.196)
    p.housekeeping(T0 + 0.196)
    assert step(p, T0 + 0.197).kind == "regular"
    assert a.owed == b.owed == 0
    return a, b


def test_a_parked_member_does_not_hold_back_its_cohort_and_rejoins_when_resumed() -> None:
    """A client that vanished (its session parked for the resume grace) must not make every step of its
    cohort wait for the deadline: the present members are stepped as soon as they are in. Its chunks are
    judged lost after the same number of regular steps as before, and once it is resumed its burst is caught
    up at once and it is awaited again like any member."""
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0, lost_after_chunks=2)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    p.park(b)  # b's stream dropped right after its chunk 0: it owes nothing yet, but is known absent
    rows_b: list[int | None] = []
    for seq in range(1, 6):
        tick = c.due
        chunk(p, a, seq, tick - 0.002)
        plan = step(p, tick - 0.001)  # no wait for b, not even the first time
        assert plan.kind == "regular" and members(plan)[0] is a and plan.planned_at == tick - 0.001
        row = plan.rows[1]
        rows_b.append(None if row is None else row.seq)
        assert row is None or (row.chunk is None and row.late), "b's row: inactive, then silence"
    assert rows_b == [None, None, 1, 2, 3], "silence from the 3rd missed step on (lost_after_chunks=2)"
    assert b.late_streak == 0, "misses while parked say nothing about its phase: no migration for them"
    assert sample(p, "duplex_engine_steps_total", kind="regular") == 6
    # b is resumed: the chunks its client captured meanwhile come in a burst (those already replaced by
    # silence are dropped); what it owes is caught up at once, and its newest chunk is this tick's
    p.resume(b)
    tick = c.due
    for seq in (1, 2, 3):
        assert not p.add_chunk(b, InputChunk(seq, SILENCE, 0, tick - 0.1, 0))
    for seq in (4, 5, 6):
        chunk(p, b, seq, tick - 0.1)
    seqs: list[int] = []
    while b.owed > 0:
        plan = step(p, tick - 0.09)
        assert plan.kind == "catchup" and members(plan) == [b]
        seqs += [r.seq for r in plan.rows if r is not None]
    assert seqs == [4, 5] and len(b.pending) == 1, "its arrears caught up at once"
    assert p.next_step(tick - 0.09, 0.0)[0] is None, "chunk 6 is this tick's: it waits for a's"
    chunk(p, a, 6, tick - 0.002)
    plan = step(p, tick - 0.001)
    assert plan.kind == "regular" and members(plan) == [a, b] and [r.seq for r in plan.rows if r] == [6, 6]
    assert not any(r.late for r in plan.rows if r) and b.owed == 0
    # back to normal: the next regular step waits for b again, and steps both as soon as both are in
    tick = c.due
    chunk(p, a, 7, tick - 0.002)
    plan, wake = p.next_step(tick - 0.001, 0.0)
    assert plan is None and wake == pytest.approx(tick + p.grace), "a resumed member is awaited again"
    chunk(p, b, 7, tick + 0.001)
    plan = step(p, tick + 0.002)
    assert plan.kind == "regular" and members(plan) == [a, b] and not any(r.late for r in plan.rows if r)


def test_a_stalled_member_holds_back_one_step_only() -> None:
    """A client still connected but sending nothing: the first regular step it misses waits until the
    deadline (its chunk may be just late); after that it is behind and the cohort steps as soon as the others
    are in. When its chunk comes it is caught up at once and re-based, and is awaited again."""
    p = planner(max_sessions=3, cohorts=1, split_after_ms=0)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.002)
    plan, wake = p.next_step(tick - 0.001, 0.0)
    assert plan is None and wake == pytest.approx(tick + p.grace), "b is awaited until the deadline once"
    assert members(step(p, tick + p.grace)) == [a] and b.owed == 1
    for seq in (2, 3):
        tick = c.due
        chunk(p, a, seq, tick - 0.002)
        plan = step(p, tick - 0.001)
        assert plan.kind == "regular" and members(plan) == [a], "behind: not waited for"
    assert b.owed == 3 and b.late_streak == 3
    # b's chunks come back (late) in the middle of the period: caught up at once
    t = c.due - p.period / 2
    chunk(p, b, 1, t)
    plan = step(p, t + 0.001)
    assert plan.kind == "catchup" and members(plan) == [b] and plan.rows[0] is not None and plan.rows[0].late
    assert b.owed == 0, "caught up with all it sent: re-based"
    tick = c.due
    chunk(p, a, 4, tick - 0.002)
    assert p.next_step(tick - 0.001, 0.0)[0] is None, "awaited again"


def test_a_behind_members_chunk_alone_is_caught_up_not_taken_as_the_tick() -> None:
    """When every member is absent (one parked, one behind) and the behind one's chunk arrives, it is caught
    up in a catch-up step: it is an old chunk, not this tick's, so the cohort's tick does not advance."""
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    p.park(a)
    tick = c.due
    assert p.next_step(tick + p.grace + 0.001, 0.0)[0] is None, "no chunk at all: no step"
    assert a.owed == b.owed == 1, "the tick passed: both owe its chunk"
    due = c.due
    chunk(p, b, 1, due - 0.05)
    plan = step(p, due - 0.049)
    assert plan.kind == "catchup" and members(plan) == [b] and c.due == due


def test_a_burst_does_not_drive_regular_steps_that_count_an_absent_member_lost() -> None:
    """One member sends a burst (chunks ahead of its phase) while the other is behind: the burst must not be
    taken as tick after tick, or the behind member would owe a chunk for each and get silence for chunks it
    never sent. Regular steps that skip an absent member wait for the tick's own window (due − grace)."""
    p = planner(max_sessions=2, cohorts=1, split_after_ms=0, lost_after_chunks=3)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, b, 1, tick - 0.002)
    assert members(step(p, tick + p.grace)) == [b] and a.owed == 1, "a missed one step: it is behind"
    due = c.due
    mid = due - p.period / 2
    for seq in (2, 3, 4, 5):
        chunk(p, b, seq, mid)  # b's client sends four chunks at once, mid-period
    plans = []
    while (plan := p.next_step(mid + 0.001, 0.0)[0]) is not None:
        plans.append(plan)
    assert plans, "the burst is stepped at once"
    assert all(plan.kind != "regular" for plan in plans), "no tick taken before its window"
    assert all(a not in members(plan) for plan in plans), "no row, and no silence, for the behind member"
    assert a.owed == 1 and c.due == due


def test_a_model_that_goes_on_after_its_input_is_fed_silence_until_it_is_done() -> None:
    """A family that continues after its input (Hibiki): the ended member's slot is marked input-ended once
    its last chunk is stepped, and a chunk of silence waits for each of its cohort's ticks (stepped on time,
    never a substituted "lost" chunk) until a step says the model is done; then it is finished."""
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=4, cohorts=1, split_after_ms=0)
    p = StepPlanner(spec, spec.chunk_ms / 1000.0, T0, text_tokens_per_step=0, tail_chunk_samples=CHUNK_SAMPLES)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.002)
    chunk(p, b, 1, tick - 0.002)
    p.end(a)
    chores = p.housekeeping(tick - 0.001)
    assert chores.finished == [] and chores.slot_ops == [], "its last chunk is still to step"
    assert members(step(p, tick - 0.001)) == [a, b]
    seqs: list[int] = []
    for i in range(3):
        now = c.due - 0.05
        chores = p.housekeeping(now)
        assert chores.finished == []
        assert chores.slot_ops == ([SlotEndInput(a.slot)] if i == 0 else []), "the input is ended once"
        assert [(ch.seq, ch.pcm, ch.recv_mono, ch.tail) for ch in a.pending] == [(2 + i, SILENCE, now, True)]
        assert p.housekeeping(now).slot_ops == [] and len(a.pending) == 1, "one chunk of silence at a time"
        chunk(p, b, 2 + i, c.due - 0.002)
        plan = step(p, c.due - 0.001)
        row = next(r for r in plan.rows if r is not None and r.conversation.slot_session is a)
        assert plan.kind == "regular" and row.chunk is not None and not row.late
        seqs.append(row.seq)
    assert seqs == [2, 3, 4]
    p.tail_done(a)  # the last step said the model is done
    chores = p.housekeeping(c.due - 0.05)
    assert chores.finished == [a.conversation] and chores.slot_ops == [SlotMove(1, 0)]
    assert not b.tail and b.cohort == 0, "the other member goes on as it was"


def test_an_ended_member_is_finished_once_its_chunks_are_stepped() -> None:
    p = planner(max_sessions=4, cohorts=1, split_after_ms=0)
    a, b = settled_pair(p)
    c = p.cohorts[0]
    tick = c.due
    chunk(p, a, 1, tick - 0.002)
    p.end(a)
    assert p.housekeeping(tick - 0.001).finished == [], "a chunk still to step"
    assert members(step(p, tick + p.grace)) == [a]
    chores = p.housekeeping(tick + p.grace)
    assert chores.finished == [a.conversation] and chores.slot_ops == [SlotMove(1, 0)]
    assert (a.cohort, a.slot, b.slot) == (None, -1, 0) and p.placed_count() == 1
    assert p.housekeeping(tick + p.grace).finished == [], "finished once"


def test_a_prompted_member_is_not_stepped_until_prefilled_and_does_not_hold_back_its_cohort() -> None:
    p = planner(max_sessions=4, cohorts=1, split_after_ms=0.0)
    a, q = session("a"), session("q")
    q.prompt = "q's prompt"  # the family's object: the planner only carries it
    chunk(p, a, 0, T0 + 0.19)
    chunk(p, q, 0, T0 + 0.19)
    chores = p.housekeeping(T0 + 0.19)
    assert chores.slot_ops == [SlotReset(a.slot), SlotReset(q.slot, "q's prompt")]
    assert q.prefilling and p.prefill_queue == [q]
    # a's chunk is in: its step runs at once, q's row inactive; a turn with a step due runs no piece ...
    plan = step(p, T0 + 0.19)
    assert plan.kind == "regular" and members(plan) == [a] and len(plan.rows) == 2
    assert p.next_piece(T0 + 0.19, step_due=True) is None
    # ... an idle turn does
    assert p.next_piece(T0 + 0.19, step_due=False) == PlannedPiece(q.slot, q)
    # the next tick does not wait for q either; q owes it, and its chunks wait
    chunk(p, a, 1, T0 + 0.39)
    chunk(p, q, 1, T0 + 0.39)
    assert members(step(p, T0 + 0.39)) == [a]
    assert (q.owed, len(q.pending), q.late_streak) == (2, 2, 0)
    # steps due at every turn for a whole period: a piece runs after a step anyway
    assert p.next_piece(T0 + 0.30, step_due=True) is None
    assert p.next_piece(T0 + 0.40, step_due=True) == PlannedPiece(q.slot, q)
    p.prefilled(q)
    assert not q.prefilling and p.prefill_queue == [] and p.next_piece(T0 + 0.40, step_due=False) is None
    # prefilled: its chunks are caught up at once, alone, reported late
    for seq in (0, 1):
        plan = step(p, T0 + 0.41)
        assert (plan.kind, plan.first_slot, members(plan)) == ("catchup", q.slot, [q])
        row = plan.rows[0]
        assert row is not None and (row.seq, row.late) == (seq, True)
    assert q.owed == 0 and not q.pending


def test_a_member_that_leaves_mid_prefill_drops_its_prefill() -> None:
    p = planner(max_sessions=4, cohorts=1)
    q, a = session("q"), session("a")
    q.prompt = "q's prompt"
    chunk(p, q, 0, T0 + 0.19)
    chunk(p, a, 0, T0 + 0.19)
    p.housekeeping(T0 + 0.19)
    assert (q.slot, a.slot) == (0, 1)
    assert p.next_piece(T0 + 0.19, step_due=False) == PlannedPiece(0, q)
    p.leave(q)
    chores = p.housekeeping(T0 + 0.25)
    assert chores.slot_ops == [SlotDropPrefill(0), SlotMove(1, 0)]
    assert not q.prefilling and p.prefill_queue == [] and p.next_piece(T0 + 0.25, step_due=False) is None
