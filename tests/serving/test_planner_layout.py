"""The planner's cohort layout (``serving/engine/layout.py``): blocks and phases, reservations, placement,
swap-remove and migration moves — and the slot ops each returns."""

from __future__ import annotations

import pytest

from duplex.model.family_duplex import ByteTextDecoder
from duplex.serving.engine.layout import CohortLayout, SlotMove, SlotReset
from duplex.serving.engine.session import Conversation, SlotSession

T0 = 100.0
P = 0.2


def session(name: str) -> SlotSession:
    return Conversation(name, 3200, 640, max_send_backlog=20, text=ByteTextDecoder(257)).slot_session


def layout(capacity: int = 8, cohorts: int = 4) -> CohortLayout:
    return CohortLayout(capacity, cohorts, P, T0, grace_s=0.015)


def test_blocks_are_contiguous_and_phases_evenly_spaced() -> None:
    lay = layout(capacity=7, cohorts=3)
    assert [(c.start, c.size) for c in lay.cohorts] == [(0, 3), (3, 3), (6, 3)] and lay.slots == 9
    assert [c.phase_s for c in lay.cohorts] == pytest.approx([0.0, P / 3, 2 * P / 3])
    assert len(layout(capacity=2, cohorts=4).cohorts) == 2, "no more cohorts than slots"
    assert lay.tick_after(P / 3, T0 + 0.1) == pytest.approx(T0 + P + P / 3)
    assert lay.tick_after(P / 3, T0 + P / 3) == pytest.approx(T0 + P / 3), "at or after"


def test_joining_packs_members_at_the_front_and_unplacing_swap_removes() -> None:
    lay = layout()
    c = lay.cohorts[1]
    a, b, d = session("a"), session("b"), session("d")
    assert [lay.join(s, c, T0 + 0.01) for s in (a, b, d)] == [SlotReset(2), SlotReset(3), SlotReset(4)]
    assert c.due == pytest.approx(T0 + 0.05), "the first member sets the cohort's next tick"
    assert lay.unplace(a) == [SlotMove(4, 2)] and (d.slot, b.slot) == (2, 3) and c.members == [d, b]
    assert lay.unplace(b) == [], "the last member leaves no hole"
    assert (a.cohort, a.slot) == (None, -1) and lay.unplace(a) == [], "not placed: nothing to do"
    assert lay.placed_count() == 1


def test_a_claim_off_its_hint_goes_by_arrival_and_without_room_waits() -> None:
    lay = layout(capacity=2, cohorts=2)  # ticks at phases 0 and 100 ms, one slot each
    a, b, d = session("a"), session("b"), session("d")
    assert lay.reserve(a, T0 + 0.001) == pytest.approx(T0 + 0.1 - 0.030) and a.reserved == 1
    a.arrival_phase_s = P - 0.01  # just before cohort 0's tick, 90 ms past cohort 1's: off its hint
    assert lay.claim(a) == (lay.cohorts[0], "arrival") and a.reserved is None and lay.cohorts[1].reserved == 0
    lay.join(a, lay.cohorts[0], T0)
    lay.join(d, lay.cohorts[1], T0)
    b.arrival_phase_s = 0.05
    assert lay.claim(b) is None, "no room (a slot still held by a session whose leave is queued): next time"
    lay.unplace(d)
    assert lay.claim(b) == (lay.cohorts[1], "no_hint")


def test_a_migration_moves_state_to_the_target_block_and_fills_the_hole() -> None:
    lay = layout()
    src, dst = lay.cohorts[0], lay.cohorts[2]
    a, b = session("a"), session("b")
    lay.join(a, src, T0)
    lay.join(b, src, T0)
    phase = dst.phase_s - 0.01
    assert lay.migration_target(src, phase, waited=0.09) is dst
    assert lay.migration_target(src, phase, waited=0.015) is None, "not worth it: it would not halve the wait"
    assert lay.move(a, dst, phase, T0 + 0.3) == [SlotMove(0, dst.start), SlotMove(1, 0)]
    assert (a.cohort, a.slot, a.arrival_phase_s) == (2, dst.start, phase) and (b.cohort, b.slot) == (0, 0)
    assert dst.due == pytest.approx(T0 + 0.3), "an empty target's next tick: at once if it is due"
