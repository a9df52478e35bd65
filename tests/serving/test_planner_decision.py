"""The planner's per-cohort decision (``serving/engine/decision.py``) on constructed cohorts: which step is due
or when to look again, which cohort goes first, and what each member's row consumes. Pure functions: every
test also checks that nothing it was given changed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from duplex.model.family_duplex import ByteTextDecoder
from duplex.serving.engine.decision import (
    CohortDecision,
    Due,
    MemberTake,
    StepKind,
    StepRules,
    decide_cohort,
    idle_tick_passed,
    owed_after_idle_tick,
    pick_step,
    row_span,
    take_member,
    wants_migration,
)
from duplex.serving.engine.layout import Cohort
from duplex.serving.engine.session import Conversation, InputChunk, SlotSession

RULES = StepRules(
    period=0.2, grace=0.015, split_after=0.008, split_below_load=0.3, lost_after_chunks=2, migrate_after_misses=3
)
TICK = 100.2
"""The constructed cohort's next tick (``Cohort.due``)."""
DEADLINE = TICK + RULES.grace
OVERDUE_BEFORE = DEADLINE - RULES.period
"""The previous regular step's deadline: a chunk received before it missed that step."""


def member(name: str, *arrivals: float, owed: int = 0, parked: bool = False, next_seq: int = 5) -> SlotSession:
    """A member with chunks received at ``arrivals`` (seq ``next_seq`` on), ``owed`` and ``parked`` as given."""
    conv = Conversation(name, 3200, 640, max_send_backlog=20, text=ByteTextDecoder(257))
    s = conv.slot_session
    s.owed, s.parked, s.next_seq = owed, parked, next_seq
    for i, t in enumerate(arrivals):
        s.pending.append(InputChunk(next_seq + i, b"", 0, t, 0))
    return s


def cohort(*members: SlotSession, split_for: float = -1.0) -> Cohort:
    return Cohort(0, 0, 4, members=list(members), due=TICK, split_for=split_for)


def state(c: Cohort) -> tuple[float, float, list[tuple[int, int, int, float, int]]]:
    return c.due, c.split_for, [(m.owed, m.next_seq, m.late_streak, m.wait_ema_s, len(m.pending)) for m in c.members]


def decide(c: Cohort, now: float, load: float = 0.0, rules: StepRules = RULES) -> CohortDecision:
    before = state(c)
    d = decide_cohort(c, now, load, rules)
    assert state(c) == before, "a decision mutates nothing"
    return d


# ----- is a step due ---------------------------------------------------------------------------------------
def test_every_member_in_is_a_regular_step_at_once() -> None:
    c = cohort(member("a", TICK - 0.03), member("b", TICK - 0.02))
    assert decide(c, TICK - 0.019) == CohortDecision(0, "regular", TICK - 0.03, None)


def test_a_member_on_its_phase_is_awaited_until_the_deadline_or_a_split() -> None:
    c = cohort(member("a", TICK - 0.03), member("b"))
    assert decide(c, TICK - 0.025, load=0.5) == CohortDecision(0, None, TICK - 0.03, DEADLINE), "busy: no split"
    d = decide(c, TICK - 0.025, load=0.1)
    assert d.kind is None and d.wake == pytest.approx(TICK - 0.03 + RULES.split_after)
    assert decide(c, TICK - 0.022, load=0.1).kind == "split"
    assert decide(c, DEADLINE, load=0.5).kind == "regular", "the deadline steps without it"


def test_no_split_twice_in_a_tick_nor_while_a_member_is_behind() -> None:
    once = cohort(member("a", TICK - 0.03), member("b"), split_for=TICK)
    assert decide(once, TICK - 0.02) == CohortDecision(0, None, TICK - 0.03, DEADLINE)
    no_split = replace(RULES, split_after=0.0)
    assert decide(cohort(member("a", TICK - 0.03), member("b")), TICK - 0.02, rules=no_split).wake == DEADLINE
    behind = cohort(member("a", TICK - 0.03), member("b", owed=1), member("c"))
    assert decide(behind, TICK - 0.02) == CohortDecision(0, None, TICK - 0.03, DEADLINE)


def test_absent_members_are_not_awaited_but_the_tick_window_is() -> None:
    """Parked or behind members hold nothing back — once the tick's window (due − grace) is open."""
    for absent in (member("parked", parked=True), member("behind", owed=1)):
        c = cohort(member("a", TICK - 0.1), absent)
        d = decide(c, TICK - 0.09, load=0.5)
        assert d.kind is None and d.wake == pytest.approx(TICK - RULES.grace), absent.conversation.id
        assert decide(c, TICK - RULES.grace, load=0.5).kind == "regular", absent.conversation.id


def test_a_member_ahead_is_not_awaited() -> None:
    c = cohort(member("a", TICK - 0.01), member("ahead", owed=-1))
    assert decide(c, TICK - 0.009, load=0.5).kind == "regular"


@pytest.mark.parametrize(
    ("why", "late"),
    [
        ("a burst", member("b", TICK - 0.05, TICK - 0.05)),
        ("a behind member's chunk", member("b", TICK - 0.05, owed=1)),
        ("a chunk that missed the last deadline", member("b", OVERDUE_BEFORE - 0.001)),
    ],
)
def test_a_burst_or_an_overdue_chunk_is_caught_up_at_once(why: str, late: SlotSession) -> None:
    c = cohort(member("a"), late)
    assert decide(c, TICK - 0.049, load=0.5).kind == "catchup", why


def test_a_behind_members_chunk_alone_is_not_the_tick() -> None:
    c = cohort(member("a", parked=True, owed=1), member("b", TICK - 0.05, owed=1))
    assert decide(c, TICK + 0.001, load=0.5).kind == "catchup"


def test_nothing_pending_is_no_step_and_no_wake() -> None:
    c = cohort(member("a"), member("b"))
    assert decide(c, DEADLINE + 0.1) == CohortDecision(0, None, DEADLINE + 0.1, None)


def test_an_idle_tick_passes_only_after_its_deadline_with_nothing_pending() -> None:
    a, b = member("a", owed=-1), member("b", owed=2)
    c = cohort(a, b)
    assert not idle_tick_passed(c, DEADLINE, RULES.grace)
    assert idle_tick_passed(c, DEADLINE + 0.001, RULES.grace)
    assert [owed_after_idle_tick(m, RULES.lost_after_chunks) for m in (a, b)] == [0, 2], "capped at the bound"
    assert not idle_tick_passed(cohort(member("c", TICK)), DEADLINE + 0.001, RULES.grace)


# ----- which cohort goes first ---------------------------------------------------------------------------
def test_the_cohort_with_the_oldest_chunk_goes_first_and_wake_is_the_soonest() -> None:
    decisions = [
        CohortDecision(0, None, 1.0, 5.0),
        CohortDecision(1, "catchup", 2.0, None),
        CohortDecision(2, "regular", 1.5, None),
        CohortDecision(3, "split", 1.5, None),
        CohortDecision(4, None, 0.5, 4.0),
        CohortDecision(5, None, 0.1, None),
    ]
    assert pick_step(decisions) == (Due(2, "regular"), 4.0), "the lower index among equals"
    assert pick_step(decisions[:1] + decisions[4:]) == (None, 4.0)
    assert pick_step([]) == (None, None)


# ----- what each row consumes ----------------------------------------------------------------------------
def take(m: SlotSession, kind: StepKind, now: float = TICK) -> MemberTake:
    before = (m.owed, m.next_seq, m.late_streak, m.wait_ema_s, len(m.pending))
    t = take_member(m, kind, OVERDUE_BEFORE, now, RULES.lost_after_chunks)
    assert (m.owed, m.next_seq, m.late_streak, m.wait_ema_s, len(m.pending)) == before, "nothing mutated"
    return t


def test_a_regular_step_takes_an_on_time_chunk() -> None:
    m = member("a", TICK - 0.01)
    m.late_streak, m.wait_ema_s = 2, 0.02
    t = take(m, "regular")
    assert t == MemberTake(True, True, 5, False, 0, 6, 0, pytest.approx(0.02 + 0.3 * (0.01 - 0.02)))


def test_a_behind_member_is_late_and_re_based_once_caught_up() -> None:
    m = member("a", TICK - 0.01, owed=1)
    m.late_streak, m.wait_ema_s = 2, 0.02
    assert take(m, "regular") == MemberTake(True, True, 5, True, 0, 6, 0, 0.02), "late chunks leave the wait alone"
    burst = member("b", TICK - 0.01, TICK - 0.01, owed=2)
    assert take(burst, "catchup") == MemberTake(True, True, 5, True, 1, 6, 0, 0.0), "more to come: not re-based"


def test_a_regular_step_without_a_chunk_is_an_inactive_row_then_silence() -> None:
    m = member("a", owed=1, next_seq=7)
    assert take(m, "regular") == MemberTake(False, False, 7, False, 2, 7, 1, 0.0), "owes 2 = the bound: inactive"
    m.owed = 2
    assert take(m, "regular") == MemberTake(True, False, 7, True, 2, 8, 1, 0.0), "owes 3: silence for chunk 7"
    parked = member("p", owed=0, parked=True)
    assert take(parked, "regular").late_streak == 0, "a parked member's misses say nothing about its phase"
    on_phase = member("o", owed=-1)
    assert take(on_phase, "regular") == MemberTake(False, False, 5, False, 0, 5, 0, 0.0), "ahead: no miss"


def test_a_split_step_leaves_its_member_ahead_for_the_tick() -> None:
    assert take(member("a", TICK - 0.02), "split") == MemberTake(True, True, 5, False, -1, 6, 0, 0.0)


def test_a_caught_up_chunk_that_missed_its_step_is_re_based_not_ahead() -> None:
    assert take(member("a", OVERDUE_BEFORE - 0.001), "catchup") == MemberTake(True, True, 5, True, 0, 6, 0, 0.0)


def test_a_non_regular_step_leaves_a_member_without_a_chunk_alone() -> None:
    m = member("a", owed=1, next_seq=3)
    m.late_streak = 2
    kinds: tuple[StepKind, ...] = ("catchup", "split")
    for kind in kinds:
        assert take(m, kind) == MemberTake(False, False, 3, False, 1, 3, 2, 0.0), kind


def test_row_span_all_rows_for_a_regular_step_else_the_active_range() -> None:
    on = MemberTake(True, True, 0, False, 0, 1, 0, 0.0)
    off = MemberTake(False, False, 0, False, 0, 0, 0, 0.0)
    assert row_span([off, on, off], "regular") == (0, 3)
    assert row_span([off, on, off, on, off], "catchup") == (1, 4)
    assert row_span([off, off], "split") == (0, 2)


def test_a_member_wants_to_migrate_after_missed_steps_or_long_waits_with_a_chunk_in() -> None:
    m = member("a", TICK - 0.1)
    assert not wants_migration(m, RULES, 4)
    m.late_streak = RULES.migrate_after_misses
    assert wants_migration(m, RULES, 4)
    m.late_streak, m.wait_ema_s = 0, RULES.period / 8 + 0.001
    assert wants_migration(m, RULES, 4) and not wants_migration(m, RULES, 2)
    m.pending.clear()
    assert not wants_migration(m, RULES, 4), "nothing to judge its phase by"
