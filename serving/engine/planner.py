"""The step planner: which cohort steps next, on which rows, with which chunks — bookkeeping only.

Phase-cohort continuous batching. Clients send chunks on their own clocks, so sessions differ in *phase*
within the chunk period P. The slot capacity is split into C cohorts of contiguous slots; cohort i ticks at
phase i·P/C and steps once per period, as soon as every member it waits for has its next chunk in, or at its
deadline ``tick + grace`` without the late ones. It waits only for members on their phase: not for one known to
be absent — *parked* (its stream dropped and the engine keeps its slot for the resume grace; the event loop
says so through the scheduler's inbox) or *behind* (it missed the cohort's last regular step and has sent
nothing since) — nor for one already ahead, so a vanished or stalled client costs the rest of its cohort no
wait at all. A new session joins the cohort (with room) whose tick comes soonest after its first chunk
arrived, so a chunk waits at most ≈ P / C for its step — never for a global tick — and a lone session not at
all. Better still, ``reserve`` keeps a place in the cohort with the most room for a new session and tells
its client when to send (the phase hint in SessionReady): a steered cohort's members arrive together and wait
for no one. Sessions are packed at the front of their cohort's block, so one model step runs on the contiguous
rows ``start .. start+n``.

Late-chunk policy (docs/serving.md has the long form):
  * A member missing at a regular step (at the deadline, or earlier when it was known absent) is planned as
    an inactive row (nothing committed). When its chunk arrives the cohort runs a catch-up step at once,
    with only the members holding overdue chunks active, on the smallest slot range that holds them. The
    same holds for a chunk of a session that joined the cohort just after its step.
  * Each member keeps ``owed`` = its cohort's regular steps since it joined − chunks it consumed. While a
    client sends nothing, every regular step adds one; once it owes more than ``lost_after_chunks``, silence
    is planned in place of its oldest missing chunk (the output stage warns ``CHUNK_LOST``) and the real chunk
    is dropped (``LATE_CHUNK_DROPPED``) when it finally arrives. A member that has caught up with all it sent
    is re-based to owe nothing (after a stall its chunks simply arrive at a later phase), and a client
    sending faster than real time owes a negative amount: it is never declared lost for that. A member that
    owes (behind) or is parked does not hold back the regular steps, so they keep coming at the present
    members' pace and its loss is judged after the same number of them; a parked member that is resumed
    rejoins like any member after a stall (its burst is caught up, then it is re-based).
  * A member with two or more chunks waiting (a burst after a stall, or a client sending faster than real
    time) also triggers an immediate catch-up step.
  * Split steps (latency at low load): while the step thread was busy less than ``split_below_load`` of the
    last two periods, members whose chunks have waited ``split_after_ms`` for the rest of their cohort are
    stepped without them (at most once per cohort and tick, never while a member is behind: then the
    regular steps, which do not wait for it, are what judge its chunks lost); they are then ahead (owe −1)
    for this tick only and do not hold back its regular step.
  * A session that misses ``migrate_after_misses`` regular steps in a row, or whose chunks wait on average
    more than P / (2C) for their step, is moved to the cohort whose step comes soonest after its chunks'
    arrival phase, when that at least halves its wait.
A cohort with no chunk at all at its deadline does not step: a conversation whose client pauses is paused.

The planner owns no tensors and reads no clock: every call that depends on time takes ``now`` (monotonic
seconds), so tests drive it with a fake clock. Slot moves and resets it decides are returned
(``Housekeeping.slot_ops``) for the executor to apply to the model and codec state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..metrics import EngineMetrics
from ..spec import EngineSpec
from .session import Conversation, InputChunk, SlotSession

log = logging.getLogger(__name__)

SEND_LEAD_S = 0.030
"""A steered client is told to send so that its chunks would arrive this long before its cohort's tick if
nothing were in transit. Early is cheap and late is dear: a cohort steps as soon as all its members are in,
so a lead costs no one any wait, while a first chunk that arrives after its tick's deadline puts its session
in the next cohort for good (a whole P / C of wait on every chunk). The hint's error while sessions join is
about ±20–40 ms on the 2-core VM (64 sessions joining at 32/s, ``client.first_send_us``); with 30 ms of lead
every steered session of such a ramp landed in its reserved cohort (docs/benchmarks.md)."""

StepKind = Literal["regular", "catchup", "split"]


@dataclass
class Cohort:
    """A contiguous block of slots stepped together at one phase of the chunk period."""

    index: int
    """Position in the planner's cohort list."""
    start: int
    """First slot of its block."""
    size: int
    """Slots in its block."""
    members: list[SlotSession] = field(default_factory=list)
    """Placed sessions; member i holds slot ``start + i``."""
    phase_s: float = 0.0
    """Tick phase within the period (seconds after the planner's t0, modulo the period)."""
    due: float = 0.0
    """Monotonic time of the next tick; the deadline is ``due + grace``."""
    split_for: float = -1.0
    """The tick (``due``) for which a split step already ran."""
    reserved: int = 0
    """Slots promised to new sessions that were told to send at this cohort's phase (``reserve``)."""

    @property
    def room(self) -> int:
        return self.size - len(self.members) - self.reserved


@dataclass(frozen=True)
class PlannedRow:
    """One active row of a step: whose it is and what it consumes."""

    conversation: Conversation
    """The loop-side session the row's outputs go to."""
    chunk: InputChunk | None
    """The audio chunk consumed; None = silence substituted for a lost chunk."""
    seq: int
    """Sequence number of the consumed (or substituted) chunk."""
    late: bool
    """The chunk missed its cohort's regular step (or stands in for a lost one)."""
    text: tuple[int, ...] = ()
    """Typed-text byte tokens fed with this chunk."""
    video: torch.Tensor | None = None
    """A video frame (3, V, V) attached to the chunk's first frame."""
    aim_error_s: float = 0.0
    """When the chunk arrived relative to its cohort's aim (``StepPlanner.aim_error``; 0 without a chunk)."""


@dataclass(frozen=True)
class StepPlan:
    """One model step: a cohort, its kind and, per row of the slot range, what the row consumes."""

    cohort: int
    """Index of the stepped cohort."""
    kind: StepKind
    """regular (the cohort's tick), catchup (late or burst chunks) or split (early, at low load)."""
    first_slot: int
    """Slot of ``rows[0]``: the step runs on slots ``first_slot .. first_slot + len(rows)``."""
    rows: tuple[PlannedRow | None, ...]
    """One entry per slot of the range; None = an inactive row (computed, nothing committed)."""
    planned_at: float
    """Monotonic time the plan was made."""

    @property
    def slots(self) -> slice:
        return slice(self.first_slot, self.first_slot + len(self.rows))


@dataclass(frozen=True)
class SlotMove:
    """Copy the state of slot ``src`` into slot ``dst`` (compaction or migration)."""

    src: int
    dst: int


@dataclass(frozen=True)
class SlotReset:
    """Make ``slot`` a fresh session."""

    slot: int


@dataclass
class Housekeeping:
    """What the planner decided between steps, for the executor and the output stage to carry out."""

    slot_ops: list[SlotMove | SlotReset] = field(default_factory=list)
    """State moves and resets, in order."""
    finished: list[Conversation] = field(default_factory=list)
    """Sessions that ended and have nothing left to step: close their streams with OK."""


class StepPlanner:
    """Cohorts, placement, migration and the late/lost policy for ``spec.max_sessions`` slots."""

    def __init__(
        self, spec: EngineSpec, period_s: float, t0: float, text_tokens_per_step: int, metrics: EngineMetrics
    ) -> None:
        """``t0``: the monotonic time phases count from; ``text_tokens_per_step``: typed-text tokens one row
        can take per step (frames × text slots; 0 = the model takes no typed text)."""
        self.spec, self.metrics = spec, metrics
        self.period = period_s
        self.t0 = t0
        self.grace = spec.grace_ms / 1000.0
        self.text_per_step = text_tokens_per_step
        self.capacity = spec.max_sessions
        n_cohorts = min(spec.cohorts, self.capacity)
        block = math.ceil(self.capacity / n_cohorts)
        # evenly spaced tick phases: a chunk waits at most period / cohorts for its cohort's tick, and at
        # capacity the cohorts' steps are spread evenly over the period instead of queueing behind each other
        self.cohorts = [Cohort(i, i * block, block, phase_s=i * period_s / n_cohorts) for i in range(n_cohorts)]
        self.slots = n_cohorts * block
        """Rows of the model and codec state."""
        self.unplaced: list[SlotSession] = []
        self.leaving: list[SlotSession] = []

    # ----- queries (no mutation) ------------------------------------------------------------------------
    def tick_after(self, phase: float, t: float) -> float:
        """The first tick at ``phase`` at or after ``t``."""
        k = math.ceil((t - self.t0 - phase) / self.period)
        return self.t0 + phase + k * self.period

    def wait_for(self, cohort: Cohort, phase: float) -> float:
        """How long a chunk arriving at ``phase`` waits at most for ``cohort``'s next tick."""
        return (cohort.phase_s - phase) % self.period

    def phase_of(self, t: float) -> float:
        return (t - self.t0) % self.period

    def aim_error(self, c: Cohort, t: float) -> float:
        """How far from ``c``'s aim a chunk received at ``t`` came in: the phase hint aims chunks at
        ``SEND_LEAD_S`` before the cohort's tick. Negative = early; on the period's circle (within ±P/2)."""
        e = (self.phase_of(t) - (c.phase_s - SEND_LEAD_S)) % self.period
        return e - self.period if e > self.period / 2 else e

    def placed_count(self) -> int:
        return sum(len(c.members) for c in self.cohorts)

    def best_cohort(self, phase: float, exclude: Cohort | None = None) -> Cohort | None:
        """The cohort with room whose tick comes soonest after ``phase``."""
        rooms = [c for c in self.cohorts if c is not exclude and c.room > 0]
        return min(rooms, key=lambda c: (self.wait_for(c, phase), c.index)) if rooms else None

    def reserved_fits(self, c: Cohort, phase: float) -> bool:
        """Did a steered session's first chunk arrive near its reserved cohort's tick (it followed the hint)?"""
        early = (c.phase_s - phase) % self.period  # arrival before the tick
        spacing = self.period / len(self.cohorts)  # ticks apart: earlier than that, another tick is sooner
        return early <= min(SEND_LEAD_S + spacing / 2, spacing) or self.period - early <= self.grace

    # ----- inputs ----------------------------------------------------------------------------------------
    def reserve(self, s: SlotSession, not_before: float) -> float | None:
        """Reserve a cohort for a new session and return the phase hint: the monotonic time, not before
        ``not_before``, at which its first chunk should arrive so that every chunk arrives just before that
        cohort's tick (None: nothing to reserve).

        The cohort with the most room is chosen (the soonest among equals), so steered sessions spread
        evenly over the period and each step's members arrive together instead of waiting for each other.
        """
        open_ = [c for c in self.cohorts if c.room > 0]
        if not open_ or s.cohort is not None or s.reserved is not None:
            return None

        def arrive_at(c: Cohort) -> float:
            return self.tick_after(c.phase_s, not_before + SEND_LEAD_S) - SEND_LEAD_S

        cohort = min(open_, key=lambda c: (-c.room, arrive_at(c)))
        cohort.reserved += 1
        s.reserved = cohort.index
        return arrive_at(cohort)

    def add_chunk(self, s: SlotSession, chunk: InputChunk) -> bool:
        """Queue a validated chunk. False = it came after silence was substituted for it, or after the
        session left (dropped)."""
        if chunk.seq < s.next_seq or s.left:
            return False
        s.pending.append(chunk)
        if s.cohort is None and s not in self.unplaced:
            self.unplaced.append(s)
        return True

    def add_text(self, s: SlotSession, tokens: list[int]) -> None:
        s.text_queue.extend(tokens)

    def set_video(self, s: SlotSession, frame: torch.Tensor) -> None:
        s.video = frame

    def end(self, s: SlotSession) -> None:
        """The client finished sending: step what is queued, then finish."""
        if s.left:
            return
        s.ended = True
        if s.cohort is None and s not in self.unplaced:
            self.unplaced.append(s)  # no audio at all: housekeeping finishes it

    def park(self, s: SlotSession) -> None:
        """The session's stream dropped and its slot is kept for a resume: its cohort stops waiting for it."""
        s.parked = True

    def resume(self, s: SlotSession) -> None:
        """A parked session has a stream again: its chunks are awaited like any member's (once it has caught
        up with what it owes)."""
        s.parked = False

    def leave(self, s: SlotSession) -> None:
        """Free the session's slot at the next housekeeping (idempotent)."""
        if not s.left:
            s.left = True
            self.leaving.append(s)

    # ----- between steps -----------------------------------------------------------------------------
    def housekeeping(self, now: float) -> Housekeeping:
        """Free the slots of sessions that left, place new ones, finish ended ones, migrate badly phased ones."""
        out = Housekeeping()
        for s in self.leaving:
            if s in self.unplaced:
                self.unplaced.remove(s)
            self._release(s)
            self._unplace(s, out)
        self.leaving.clear()
        for s in list(self.unplaced):
            if not s.pending:
                continue
            s.arrival_phase_s = self.phase_of(s.pending[0].recv_mono)
            reserved = self._release(s)
            cohort = reserved if reserved is not None and self.reserved_fits(reserved, s.arrival_phase_s) else None
            how = "no_hint" if reserved is None else "hint" if cohort is not None else "arrival"
            if cohort is None:
                cohort = self.best_cohort(s.arrival_phase_s)
            if cohort is None:  # a slot is still held by a session whose leave is queued: next time
                continue
            self.unplaced.remove(s)
            self._place(s, cohort, now)
            self.metrics.placements.labels(how).inc()
            log.debug(
                "placed in cohort %d by %s (phase %.1f ms, cohort phase %.1f ms, %d members)",
                cohort.index,
                how,
                s.arrival_phase_s * 1e3,
                cohort.phase_s * 1e3,
                len(cohort.members),
                extra={"session": s.conversation.id},
            )
            out.slot_ops.append(SlotReset(s.slot))
        for c in self.cohorts:
            for s in list(c.members):
                if s.ended and not s.pending:
                    self._unplace(s, out)
                    out.finished.append(s.conversation)
                elif s.pending and (
                    s.late_streak >= self.spec.migrate_after_misses
                    or s.wait_ema_s > self.period / (2 * len(self.cohorts))
                ):
                    self._migrate(s, c, now, out)
        for s in list(self.unplaced):
            if s.ended and not s.pending:
                self.unplaced.remove(s)
                self._release(s)
                out.finished.append(s.conversation)
        return out

    def _release(self, s: SlotSession) -> Cohort | None:
        """Drop a session's reservation; returns the cohort it had reserved."""
        if s.reserved is None:
            return None
        c = self.cohorts[s.reserved]
        c.reserved -= 1
        s.reserved = None
        return c

    def _place(self, s: SlotSession, cohort: Cohort, now: float) -> None:
        slot = cohort.start + len(cohort.members)
        if not cohort.members:
            cohort.due = self.tick_after(cohort.phase_s, now - self.grace)
        cohort.members.append(s)
        s.cohort, s.slot = cohort.index, slot

    def _unplace(self, s: SlotSession, out: Housekeeping) -> None:
        """Swap-remove ``s`` from its cohort block (the block's last member moves into its slot)."""
        if s.cohort is None:
            return
        c = self.cohorts[s.cohort]
        i = c.members.index(s)
        last = c.members[-1]
        if last is not s:
            out.slot_ops.append(SlotMove(last.slot, s.slot))
            last.slot = s.slot
            c.members[i] = last
        c.members.pop()
        s.cohort, s.slot = None, -1

    def _migrate(self, s: SlotSession, current: Cohort, now: float, out: Housekeeping) -> None:
        """Move a session whose chunks keep missing its cohort's step, or keep waiting long for it, to the
        cohort whose step comes soonest after its chunks arrive (an empty cohort: at once)."""
        s.late_streak = 0
        waited = s.wait_ema_s
        s.wait_ema_s = 0.0  # judge the new placement afresh
        phase = self.phase_of(s.pending[-1].recv_mono)
        target = self.best_cohort(phase, exclude=current)
        if target is None:
            return
        if self.wait_for(target, phase) >= min(waited, self.wait_for(current, phase)) / 2:
            return
        out.slot_ops.append(SlotMove(s.slot, target.start + len(target.members)))
        self._unplace(s, out)  # the block's last member fills the hole
        s.arrival_phase_s = phase
        self._place(s, target, now)
        self.metrics.migrations.inc()
        log.info(
            "session moved from cohort %d to %d (phase %.0f ms)",
            current.index,
            target.index,
            phase * 1e3,
            extra={"session": s.conversation.id},
        )

    # ----- the next step -----------------------------------------------------------------------------
    def next_step(self, now: float, load: float) -> tuple[StepPlan | None, float | None]:
        """Plan the most urgent cohort step due at ``now`` and take its chunks (None: nothing is due), with
        the time to look again. ``load``: share of the last two periods the step thread was busy."""
        best: tuple[float, Cohort, StepKind] | None = None
        wake: float | None = None
        split_after = self.spec.split_after_ms / 1000.0
        spare = load < self.spec.split_below_load
        for c in self.cohorts:
            if not c.members:
                continue
            counts = [len(m.pending) for m in c.members]
            any_pending = any(counts)
            if not any_pending and now > c.due + self.grace:
                # a tick passed with nothing to step: it still counts (members that were stepped early by a
                # split step come back to owing nothing; absent ones owe one more, up to the loss bound)
                for m in c.members:
                    m.owed = min(m.owed + 1, self.spec.lost_after_chunks)
                c.due = self.tick_after(c.phase_s, now - self.grace)
            deadline = c.due + self.grace
            # the regular step waits only for members on their phase: not for those already ahead (stepped
            # early by a split step, or sending faster than real time), nor for those known to be absent
            # (parked, or behind: they missed the last regular step and sent nothing since — a vanished or
            # stalled client would otherwise make every step of its cohort wait for the deadline). It needs
            # one chunk of this tick, though: a behind member's chunk alone is caught up, not a tick. And
            # without every member in, it is not taken before the tick's own window (``due - grace``): else a
            # member sending a burst would drive regular steps back to back and its cohort-mates, counted
            # absent, would owe a chunk for each — and get silence for chunks they never sent.
            pairs = list(zip(counts, c.members, strict=True))
            present = any(n > 0 and m.owed <= 0 for n, m in pairs)
            everyone = all(n > 0 or m.owed < 0 for n, m in pairs)
            absent_only = all(n > 0 or m.owed != 0 or m.parked for n, m in pairs)
            tick_window = c.due - self.grace
            all_in = present and (everyone or (absent_only and now >= tick_window))
            # overdue: waiting since before the previous deadline (it missed that step, or joined after it)
            overdue_before = deadline - self.period
            catchup = any(
                len(m.pending) >= 2 or (m.pending and (m.owed > 0 or m.pending[0].recv_mono < overdue_before))
                for m in c.members
            )
            oldest = min((m.pending[0].recv_mono for m in c.members if m.pending), default=now)
            split_at = oldest + split_after
            # at most one split per tick, and none while a member is behind: then the cohort keeps to its
            # regular deadline steps, which are what judge that member's chunks lost
            can_split = split_after > 0 and spare and c.split_for != c.due and all(m.owed <= 0 for m in c.members)
            split = any_pending and can_split and now >= split_at
            if all_in or catchup or split or (any_pending and now >= deadline):
                regular = all_in or now >= deadline
                kind: StepKind = "regular" if regular else "catchup" if catchup else "split"
                if best is None or oldest < best[0]:
                    best = (oldest, c, kind)
            elif any_pending:
                soonest = min(deadline, split_at) if can_split else deadline
                if present and absent_only:
                    soonest = min(soonest, tick_window)
                wake = soonest if wake is None else min(wake, soonest)
        if best is None:
            return None, wake
        _, cohort, kind = best
        if kind == "split":
            cohort.split_for = cohort.due
        self.metrics.steps.labels(kind).inc()
        return self._take(cohort, kind, now), wake

    def _take(self, c: Cohort, kind: StepKind, now: float) -> StepPlan:
        """Take each member's next chunk (or substitute silence) for a step of ``c``, updating ``owed``."""
        regular = kind == "regular"
        rows: list[PlannedRow | None] = []
        overdue_before = c.due + self.grace - self.period  # received before the last regular step's deadline
        for m in c.members:
            if regular:
                m.owed += 1  # every regular step expects one chunk from every member
            chunk: InputChunk | None = None
            if m.pending:
                chunk = m.pending.popleft()
                missed = not regular and chunk.recv_mono < overdue_before
                late = (m.owed > 1 if regular else m.owed > 0) or missed
                m.owed -= 1
                if not m.pending and (m.owed > 0 or (m.owed < 0 and (regular or missed))):
                    # it has caught up with everything it sent, so it is exactly at its phase now: re-base.
                    # Owing more: after a stall or a cohort step it keeps missing (not counted towards loss).
                    # Owing less: a chunk that missed its step and was caught up, or an on-time one after
                    # an old burst, is not a chunk of the next tick (the cohort must wait for that one).
                    m.owed = 0
                if regular:
                    m.late_streak = 0
                    if not late:
                        m.wait_ema_s += 0.3 * ((now - chunk.recv_mono) - m.wait_ema_s)
                m.next_seq = chunk.seq + 1
                seq = chunk.seq
            elif regular:
                if m.owed > 0 and not m.parked:  # a parked member's misses say nothing about its phase
                    m.late_streak += 1
                if m.owed <= self.spec.lost_after_chunks:
                    rows.append(None)
                    continue
                m.owed -= 1  # silence stands in for the oldest missing chunk
                seq, late = m.next_seq, True
                m.next_seq += 1
            else:
                rows.append(None)
                continue
            text = tuple(m.text_queue.popleft() for _ in range(min(len(m.text_queue), self.text_per_step)))
            video, m.video = m.video, None
            aim = 0.0 if chunk is None else self.aim_error(c, chunk.recv_mono)
            rows.append(PlannedRow(m.conversation, chunk, seq, late, text, video, aim))
        first = 0
        if regular:
            c.due = self.tick_after(c.phase_s, max(now - self.grace, c.due) + 1e-6)
        else:  # a catch-up or split step: only the rows it spans
            on = [i for i, r in enumerate(rows) if r is not None]
            if on:
                first, last = on[0], on[-1] + 1
                rows = rows[first:last]
        return StepPlan(c.index, kind, c.start + first, tuple(rows), now)
