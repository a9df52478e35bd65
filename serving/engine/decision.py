"""The per-cohort step decision: is a regular, catch-up or split step of a cohort due, and what each member's
row of it consumes — the real-time policy of ``planner.py`` as functions that return values.

Nothing here mutates a cohort or a session, reads a clock, counts a metric or logs: every function reads its
inputs (a cohort, its members' pending chunks and ``owed`` counters, ``now``, the step thread's load) and
returns what it decided (``CohortDecision``, ``Due``, ``MemberTake``). The planner applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..spec import EngineSpec
from .layout import Cohort
from .session import SlotSession

StepKind = Literal["regular", "catchup", "split"]


@dataclass(frozen=True)
class StepRules:
    """The engine options the decisions depend on, in seconds."""

    period: float
    """The chunk period P."""
    grace: float
    """How long past its tick a cohort waits for late members."""
    split_after: float
    """How long a chunk waits for the rest of its cohort before a split step takes it (0 = never)."""
    split_below_load: float
    """Split steps run only while the step thread's load is below this."""
    lost_after_chunks: int
    """Owing more than this many chunks, a member gets silence in place of its oldest missing one."""
    migrate_after_misses: int
    """Regular steps missed in a row after which a member looks for a better-phased cohort."""

    @classmethod
    def of(cls, spec: EngineSpec, period_s: float) -> StepRules:
        return cls(
            period=period_s,
            grace=spec.grace_ms / 1000.0,
            split_after=spec.split_after_ms / 1000.0,
            split_below_load=spec.split_below_load,
            lost_after_chunks=spec.lost_after_chunks,
            migrate_after_misses=spec.migrate_after_misses,
        )


@dataclass(frozen=True)
class CohortDecision:
    """What one cohort wants at ``now``: a step of ``kind`` (None = none is due), and when to look again."""

    cohort: int
    """Index of the cohort."""
    kind: StepKind | None
    """The step due now, if any."""
    oldest: float
    """Arrival of its oldest pending chunk (``now`` without one): the most urgent cohort steps first."""
    wake: float | None
    """With no step due but chunks pending: when one will be (its deadline, split time or tick window)."""


@dataclass(frozen=True)
class Due:
    """The step to run now: which cohort, which kind."""

    cohort: int
    kind: StepKind


@dataclass(frozen=True)
class MemberTake:
    """One member's part in a step: what its row consumes, and its counters after the step."""

    active: bool
    """The row is active: it consumes a chunk, or silence substituted for a lost one (else inactive)."""
    consumes: bool
    """It consumes its oldest pending chunk (False with ``active``: silence stands in)."""
    seq: int
    """Sequence number of the consumed (or substituted) chunk."""
    late: bool
    """The chunk missed its cohort's regular step (or stands in for a lost one)."""
    owed: int
    next_seq: int
    late_streak: int
    wait_ema_s: float


# ----- is a step due ---------------------------------------------------------------------------------------
def stepping(c: Cohort) -> list[SlotSession]:
    """The members a step of ``c`` may take chunks from: all but those whose prompt is still being prefilled
    (their chunks wait, and no step waits for them)."""
    return [m for m in c.members if not m.prefilling]


def idle_tick_passed(c: Cohort, now: float, grace: float) -> bool:
    """A tick's deadline passed with no chunk at all to step: it still counts (members stepped early by a split
    step come back to owing nothing; absent ones owe one more, up to the loss bound) and the tick moves on."""
    return now > c.due + grace and not any(m.pending for m in stepping(c))


def owed_after_idle_tick(m: SlotSession, lost_after_chunks: int) -> int:
    """A prefilling member owes one more without bound (its chunks are waiting, none is lost)."""
    return m.owed + 1 if m.prefilling else min(m.owed + 1, lost_after_chunks)


def _tick_complete(c: Cohort, now: float, grace: float) -> tuple[bool, bool]:
    """(``all_in``: the regular step may run now, ``early_ok``: it would once the tick's window opens).

    The regular step waits only for members on their phase: not for those already ahead (stepped early by a
    split step, or sending faster than real time), nor for those known to be absent (parked, or behind: they
    missed the last regular step and sent nothing since — a vanished or stalled client would otherwise make
    every step of its cohort wait for the deadline). It needs one chunk of this tick, though: a behind member's
    chunk alone is caught up, not a tick. And without every member in, it is not taken before the tick's own
    window (``due - grace``): else a member sending a burst would drive regular steps back to back and its
    cohort-mates, counted absent, would owe a chunk for each — and get silence for chunks they never sent."""
    members = stepping(c)
    present = any(m.pending and m.owed <= 0 for m in members)
    everyone = all(m.pending or m.owed < 0 for m in members)
    absent_only = all(m.pending or m.owed != 0 or m.parked for m in members)
    all_in = present and (everyone or (absent_only and now >= c.due - grace))
    return all_in, present and absent_only


def _catchup_due(c: Cohort, overdue_before: float) -> bool:
    """A member holds a burst (two chunks or more), or an overdue chunk: it owes, or the chunk has waited since
    before the previous deadline (it missed that step, or its session joined after it)."""
    return any(
        len(m.pending) >= 2 or (m.pending and (m.owed > 0 or m.pending[0].recv_mono < overdue_before))
        for m in stepping(c)
    )


def _can_split(c: Cohort, rules: StepRules, load: float) -> bool:
    """At most one split per tick, and none while a member is behind: then the cohort keeps to its regular
    deadline steps, which are what judge that member's chunks lost."""
    spare = load < rules.split_below_load
    return rules.split_after > 0 and spare and c.split_for != c.due and all(m.owed <= 0 for m in stepping(c))


def decide_cohort(c: Cohort, now: float, load: float, rules: StepRules) -> CohortDecision:
    """Which step of ``c`` is due at ``now`` (``load``: share of the last two periods the step thread was
    busy), or when to look again. Assumes an idle tick that passed has been applied (``idle_tick_passed``)."""
    members = stepping(c)
    any_pending = any(m.pending for m in members)
    deadline = c.due + rules.grace
    all_in, early_ok = _tick_complete(c, now, rules.grace)
    catchup = _catchup_due(c, deadline - rules.period)
    oldest = min((m.pending[0].recv_mono for m in members if m.pending), default=now)
    split_at = oldest + rules.split_after
    can_split = _can_split(c, rules, load)
    split = any_pending and can_split and now >= split_at
    if all_in or catchup or split or (any_pending and now >= deadline):
        return CohortDecision(c.index, _kind(all_in or now >= deadline, catchup), oldest, None)
    if not any_pending:
        return CohortDecision(c.index, None, oldest, None)
    soonest = min(deadline, split_at) if can_split else deadline
    if early_ok:
        soonest = min(soonest, c.due - rules.grace)
    return CohortDecision(c.index, None, oldest, soonest)


def _kind(regular: bool, catchup: bool) -> StepKind:
    """The kind of a step that is due: regular (every member on its phase is in, or the deadline passed), else
    catch-up (a burst or an overdue chunk), else split (chunks that waited long enough at low load)."""
    return "regular" if regular else "catchup" if catchup else "split"


def pick_step(decisions: list[CohortDecision]) -> tuple[Due | None, float | None]:
    """The most urgent due step (the cohort whose oldest chunk came first; the lower index among equals), and
    the soonest time a cohort with nothing due wants to be looked at again."""
    best: CohortDecision | None = None
    wake: float | None = None
    for d in decisions:
        if d.kind is not None:
            if best is None or d.oldest < best.oldest:
                best = d
        elif d.wake is not None:
            wake = d.wake if wake is None else min(wake, d.wake)
    if best is None or best.kind is None:
        return None, wake
    return Due(best.cohort, best.kind), wake


# ----- what a step consumes ------------------------------------------------------------------------------
def take_member(m: SlotSession, kind: StepKind, overdue_before: float, now: float, lost_after: int) -> MemberTake:
    """What member ``m``'s row of a ``kind`` step of its cohort consumes, and ``m``'s counters after it.
    ``overdue_before``: the previous regular step's deadline (a chunk received before it missed that step)."""
    regular = kind == "regular"
    owed = m.owed + 1 if regular else m.owed  # every regular step expects one chunk from every member
    if m.prefilling:  # an inactive row; its chunks wait for the end of its prefill
        return MemberTake(False, False, m.next_seq, False, owed, m.next_seq, m.late_streak, m.wait_ema_s)
    if m.pending:
        return _take_chunk(m, regular, owed, overdue_before, now)
    if regular:
        return _miss(m, owed, lost_after)
    return MemberTake(False, False, m.next_seq, False, owed, m.next_seq, m.late_streak, m.wait_ema_s)


def _take_chunk(m: SlotSession, regular: bool, owed: int, overdue_before: float, now: float) -> MemberTake:
    """``m`` consumes its oldest pending chunk."""
    chunk = m.pending[0]
    missed = not regular and chunk.recv_mono < overdue_before
    late = (owed > 1 if regular else owed > 0) or missed
    owed -= 1
    if len(m.pending) == 1 and (owed > 0 or (owed < 0 and (regular or missed))):
        # it has caught up with everything it sent, so it is exactly at its phase now: re-base.
        # Owing more: after a stall or a cohort step it keeps missing (not counted towards loss).
        # Owing less: a chunk that missed its step and was caught up, or an on-time one after
        # an old burst, is not a chunk of the next tick (the cohort must wait for that one).
        owed = 0
    streak, wait = m.late_streak, m.wait_ema_s
    if regular:
        streak = 0
        if not late:
            wait += 0.3 * ((now - chunk.recv_mono) - wait)
    return MemberTake(True, True, chunk.seq, late, owed, chunk.seq + 1, streak, wait)


def _miss(m: SlotSession, owed: int, lost_after: int) -> MemberTake:
    """``m`` has no chunk for a regular step: an inactive row, or silence once it owes more than
    ``lost_after`` (the oldest missing chunk is lost)."""
    # a parked member's misses say nothing about its phase
    streak = m.late_streak + 1 if owed > 0 and not m.parked else m.late_streak
    if owed <= lost_after:
        return MemberTake(False, False, m.next_seq, False, owed, m.next_seq, streak, m.wait_ema_s)
    return MemberTake(True, False, m.next_seq, True, owed - 1, m.next_seq + 1, streak, m.wait_ema_s)


def row_span(takes: list[MemberTake], kind: StepKind) -> tuple[int, int]:
    """The member rows a step runs on: all of them for a regular step (absent members are inactive rows), the
    smallest range holding the active rows for a catch-up or split step."""
    on = [i for i, t in enumerate(takes) if t.active]
    if kind == "regular" or not on:
        return 0, len(takes)
    return on[0], on[-1] + 1


def wants_migration(m: SlotSession, rules: StepRules, n_cohorts: int) -> bool:
    """A member with chunks pending that missed ``migrate_after_misses`` regular steps in a row, or whose chunks
    wait on average more than P / (2C) for their step, looks for a better-phased cohort."""
    badly_phased = m.late_streak >= rules.migrate_after_misses or m.wait_ema_s > rules.period / (2 * n_cohorts)
    return bool(m.pending) and badly_phased and not m.prefilling
