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

Prompt prefill (PersonaPlex's voice and persona). A session placed with a prompt is *prefilling* until the
executor has run every piece of its prefill: its cohort's steps leave its row inactive and do not wait for it,
its chunks wait in its queue, and each regular step adds one to what it owes, so once prefilled it catches its
chunks up like a member after a stall (late, never lost). ``next_piece`` hands out one piece per turn of the step
thread, only in a turn with no step due (unless steps were due at every turn for a whole period), of the first
placed session's prefill: prefills are queued in placement order, not interleaved. A session that leaves
mid-prefill drops it (``SlotDropPrefill``).

End of input. A session whose client ended its input finishes once its last chunk is stepped — unless the model
goes on after its input (``continues_after_input``: Hibiki still translates what it heard). Then the slot's
input is marked ended (``SlotEndInput``) and a chunk of silence is queued whenever none is pending, stepped with
its cohort like a client's, until a step says the model is done (``tail_done``): then the session finishes.

The planner owns no tensors and reads no clock: every call that depends on time takes ``now`` (monotonic
seconds), so tests drive it with a fake clock. Slot moves and resets it decides are returned
(``Housekeeping.slot_ops``) for the executor to apply to the model and codec state. It counts no metric and
logs nothing either: what it decided is in what it returns (``Housekeeping.placed``/``migrated``,
``StepPlan.kind``), and the scheduler counts and logs that. ``StepPlanner`` is the facade the scheduler
calls; the bookkeeping of slots and cohorts is ``layout.CohortLayout``, and the per-cohort policy (which step
is due, what each member's row consumes) is the functions of ``decision.py``, which return values and
mutate nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..spec import EngineSpec
from .decision import (
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
from .layout import (
    SEND_LEAD_S,
    Cohort,
    CohortLayout,
    PlacedBy,
    SlotDropPrefill,
    SlotEndInput,
    SlotMove,
    SlotOp,
    SlotReset,
)
from .session import Conversation, InputChunk, SlotSession

__all__ = [
    "SEND_LEAD_S",
    "Cohort",
    "Housekeeping",
    "Migration",
    "PlacedBy",
    "Placement",
    "PlannedPiece",
    "PlannedRow",
    "SlotDropPrefill",
    "SlotEndInput",
    "SlotMove",
    "SlotOp",
    "SlotReset",
    "StepKind",
    "StepPlan",
    "StepPlanner",
]


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
    video_seq: int = -1
    """``VideoFrame.seq`` of ``video`` (-1: none)."""


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
class PlannedPiece:
    """The next piece of a session's prompt prefill (``Prompted.prefill_piece``), run in a turn of the step
    thread with no step due (``StepPlanner.next_piece``)."""

    slot: int
    """The session's slot now (its prefill is installed there when done)."""
    session: SlotSession
    """Whose prefill it is (``StepPlanner.prefilled`` when the piece says it is done)."""


@dataclass(frozen=True)
class Placement:
    """A new session placed in a cohort."""

    conversation: Conversation
    cohort: int
    how: PlacedBy
    """By its phase hint, by its arrival (hint missed), or without a hint."""
    arrival_phase_s: float
    """Phase of its first chunk's arrival within the period."""
    cohort_phase_s: float
    """Its cohort's tick phase."""
    members: int
    """Members of the cohort, itself included."""


@dataclass(frozen=True)
class Migration:
    """A session moved to a better-phased cohort."""

    conversation: Conversation
    src: int
    """Cohort it left."""
    dst: int
    """Cohort it joined."""
    phase_s: float
    """Phase its chunks now arrive at."""


@dataclass
class Housekeeping:
    """What the planner decided between steps, for the executor and the output stage to carry out (and the
    scheduler to count)."""

    slot_ops: list[SlotOp] = field(default_factory=list)
    """State moves and resets, in order."""
    finished: list[Conversation] = field(default_factory=list)
    """Sessions that ended and have nothing left to step: close their streams with OK."""
    placed: list[Placement] = field(default_factory=list)
    """New sessions placed in a cohort."""
    migrated: list[Migration] = field(default_factory=list)
    """Sessions moved to another cohort."""


class StepPlanner:
    """Cohorts, placement, migration and the late/lost policy for ``spec.max_sessions`` slots."""

    def __init__(
        self,
        spec: EngineSpec,
        period_s: float,
        t0: float,
        text_tokens_per_step: int,
        tail_chunk_samples: int = 0,
    ) -> None:
        """``t0``: the monotonic time phases count from; ``text_tokens_per_step``: typed-text tokens one row
        can take per step (frames × text slots; 0 = the model takes no typed text); ``tail_chunk_samples``: the
        chunk length of the silence fed after a session's input ended when the model goes on after its input
        (0 = it does not: a session finishes with its last chunk)."""
        self.tail_chunk_samples = tail_chunk_samples
        self.spec = spec
        self.rules = StepRules.of(spec, period_s)
        self.layout = CohortLayout(spec.max_sessions, spec.cohorts, period_s, t0, self.rules.grace)
        self.period = period_s
        self.t0 = t0
        self.grace = self.rules.grace
        self.text_per_step = text_tokens_per_step
        self.capacity = spec.max_sessions
        self.cohorts = self.layout.cohorts
        self.slots = self.layout.slots
        """Rows of the model and codec state."""
        self.unplaced: list[SlotSession] = []
        self.leaving: list[SlotSession] = []
        self.prefill_queue: list[SlotSession] = []
        """Placed sessions whose prompt is not prefilled yet, in placement order: one prefill at a time, the
        first placed first (so one staging state exists at a time, and the first session starts soonest)."""
        self.piece_since = 0.0
        """When the last prefill piece was planned (or the queue last became non-empty)."""

    # ----- queries (no mutation) ------------------------------------------------------------------------
    def tick_after(self, phase: float, t: float) -> float:
        """The first tick at ``phase`` at or after ``t``."""
        return self.layout.tick_after(phase, t)

    def wait_for(self, cohort: Cohort, phase: float) -> float:
        """How long a chunk arriving at ``phase`` waits at most for ``cohort``'s next tick."""
        return self.layout.wait_for(cohort, phase)

    def phase_of(self, t: float) -> float:
        return self.layout.phase_of(t)

    def aim_error(self, c: Cohort, t: float) -> float:
        """How far from ``c``'s aim a chunk received at ``t`` came in (``CohortLayout.aim_error``)."""
        return self.layout.aim_error(c, t)

    def placed_count(self) -> int:
        return self.layout.placed_count()

    def best_cohort(self, phase: float, exclude: Cohort | None = None) -> Cohort | None:
        """The cohort with room whose tick comes soonest after ``phase``."""
        return self.layout.best_cohort(phase, exclude)

    def reserved_fits(self, c: Cohort, phase: float) -> bool:
        """Did a steered session's first chunk arrive near its reserved cohort's tick (it followed the hint)?"""
        return self.layout.reserved_fits(c, phase)

    # ----- inputs ----------------------------------------------------------------------------------------
    def reserve(self, s: SlotSession, not_before: float) -> float | None:
        """Reserve a cohort for a new session and return the phase hint: the monotonic time, not before
        ``not_before``, at which its first chunk should arrive so that every chunk arrives just before that
        cohort's tick (None: nothing to reserve).

        The cohort with the most room is chosen (the soonest among equals), so steered sessions spread
        evenly over the period and each step's members arrive together instead of waiting for each other.
        """
        return self.layout.reserve(s, not_before)

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

    def set_video(self, s: SlotSession, frame: torch.Tensor, seq: int) -> None:
        """Queue a frame for the chunk that follows it on the stream (the latest frame before a chunk wins)."""
        at = s.pending[-1].seq + 1 if s.pending else s.next_seq
        if s.videos and s.videos[-1][0] == at:
            s.videos.pop()
        s.videos.append((at, seq, frame))

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

    def tail_done(self, s: SlotSession) -> None:
        """A step said the model's output is over after the session's input ended: finish it."""
        s.tail_done = True

    def prefilled(self, s: SlotSession) -> None:
        """The prefill of ``s``'s prompt is done: its chunks are stepped from now on (it owes the regular steps
        of its cohort that passed meanwhile, so catch-up steps run for the chunks that came)."""
        if s in self.prefill_queue:
            self.prefill_queue.remove(s)
        s.prefilling = False

    def leave(self, s: SlotSession) -> None:
        """Free the session's slot at the next housekeeping (idempotent)."""
        if not s.left:
            s.left = True
            self.leaving.append(s)

    # ----- between steps -----------------------------------------------------------------------------
    def housekeeping(self, now: float) -> Housekeeping:
        """Free the slots of sessions that left, place new ones, finish ended ones, migrate badly phased ones."""
        out = Housekeeping()
        self._free_leaving(out)
        self._place_new(now, out)
        self._finish_and_migrate(now, out)
        self._finish_unplaced(out)
        return out

    def _free_leaving(self, out: Housekeeping) -> None:
        for s in self.leaving:
            if s in self.unplaced:
                self.unplaced.remove(s)
            if s.prefilling:
                self.prefill_queue.remove(s)
                s.prefilling = False
                out.slot_ops.append(SlotDropPrefill(s.slot))
            self.layout.release(s)
            out.slot_ops += self.layout.unplace(s)
        self.leaving.clear()

    def _place_new(self, now: float, out: Housekeeping) -> None:
        """Place each new session with a chunk in: by its hint or by its first chunk's arrival phase."""
        for s in list(self.unplaced):
            if not s.pending:
                continue
            s.arrival_phase_s = self.layout.phase_of(s.pending[0].recv_mono)
            claimed = self.layout.claim(s)
            if claimed is None:  # a slot is still held by a session whose leave is queued: next time
                continue
            cohort, how = claimed
            self.unplaced.remove(s)
            reset = self.layout.join(s, cohort, now)
            if s.prompt is not None:
                if not self.prefill_queue:
                    self.piece_since = now
                s.prefilling = True
                self.prefill_queue.append(s)
            out.placed.append(
                Placement(s.conversation, cohort.index, how, s.arrival_phase_s, cohort.phase_s, len(cohort.members))
            )
            out.slot_ops.append(reset)

    def _finish_and_migrate(self, now: float, out: Housekeeping) -> None:
        for c in self.cohorts:
            for s in list(c.members):
                if s.prefilling:
                    continue
                if s.ended and not s.pending and self.tail_chunk_samples and not s.tail_done:
                    out.slot_ops += self._feed_tail(s, now)
                elif s.ended and not s.pending:
                    out.slot_ops += self.layout.unplace(s)
                    out.finished.append(s.conversation)
                elif wants_migration(s, self.rules, len(self.cohorts)):
                    self._migrate(s, c, now, out)

    def _feed_tail(self, s: SlotSession, now: float) -> list[SlotOp]:
        """Queue a chunk of silence for a session whose input ended (marking the slot's input ended first)."""
        ops: list[SlotOp] = [] if s.tail else [SlotEndInput(s.slot)]
        s.tail = True
        s.pending.append(InputChunk(s.next_seq, bytes(2 * self.tail_chunk_samples), 0, now, 0, tail=True))
        return ops

    def _finish_unplaced(self, out: Housekeeping) -> None:
        for s in list(self.unplaced):
            if s.ended and not s.pending:
                self.unplaced.remove(s)
                self.layout.release(s)
                out.finished.append(s.conversation)

    def _migrate(self, s: SlotSession, current: Cohort, now: float, out: Housekeeping) -> None:
        """Move a session whose chunks keep missing its cohort's step, or keep waiting long for it, to the
        cohort whose step comes soonest after its chunks arrive (an empty cohort: at once)."""
        waited = s.wait_ema_s
        s.late_streak, s.wait_ema_s = 0, 0.0  # judge the new placement afresh
        phase = self.layout.phase_of(s.pending[-1].recv_mono)
        target = self.layout.migration_target(current, phase, waited)
        if target is None:
            return
        out.slot_ops += self.layout.move(s, target, phase, now)
        out.migrated.append(Migration(s.conversation, current.index, target.index, phase))

    # ----- the next prefill piece, the next step ------------------------------------------------------
    def next_piece(self, now: float, step_due: bool) -> PlannedPiece | None:
        """The prefill piece to run this turn (``step_due``: a step runs in it), if any: the next piece of the
        first placed session whose prompt is not prefilled yet. A piece runs only in a turn with
        no step due, so a step waits for one piece at most (the one under way when it fell due); but when steps
        were due at every turn for a whole period (an overloaded step thread), one runs after the step anyway,
        so a prefill always finishes."""
        if not self.prefill_queue or (step_due and now - self.piece_since < self.period):
            return None
        self.piece_since = now
        s = self.prefill_queue[0]
        return PlannedPiece(s.slot, s)

    def next_step(self, now: float, load: float) -> tuple[StepPlan | None, float | None]:
        """Plan the most urgent cohort step due at ``now`` and take its chunks (None: nothing is due), with
        the time to look again. ``load``: share of the last two periods the step thread was busy."""
        decisions = []
        for c in self.cohorts:
            if not c.members:
                continue
            if idle_tick_passed(c, now, self.grace):
                for m in c.members:
                    m.owed = owed_after_idle_tick(m, self.rules.lost_after_chunks)
                c.due = self.layout.tick_after(c.phase_s, now - self.grace)
            decisions.append(decide_cohort(c, now, load, self.rules))
        due, wake = pick_step(decisions)
        if due is None:
            return None, wake
        cohort = self.cohorts[due.cohort]
        if due.kind == "split":
            cohort.split_for = cohort.due
        return self._take(cohort, due.kind, now), wake

    def _take(self, c: Cohort, kind: StepKind, now: float) -> StepPlan:
        """Take each member's next chunk (or substitute silence) for a step of ``c``, updating ``owed``."""
        overdue_before = c.due + self.grace - self.period  # received before the last regular step's deadline
        lost_after = self.rules.lost_after_chunks
        takes = [take_member(m, kind, overdue_before, now, lost_after) for m in c.members]
        rows = [self._apply(c, m, t) for m, t in zip(c.members, takes, strict=True)]
        if kind == "regular":
            c.due = self.layout.tick_after(c.phase_s, max(now - self.grace, c.due) + 1e-6)
        first, last = row_span(takes, kind)
        return StepPlan(c.index, kind, c.start + first, tuple(rows[first:last]), now)

    def _apply(self, c: Cohort, m: SlotSession, t: MemberTake) -> PlannedRow | None:
        """Carry out a member's take: consume its chunk, set its counters, build its row (None: inactive)."""
        chunk = m.pending.popleft() if t.consumes else None
        m.owed, m.next_seq, m.late_streak, m.wait_ema_s = t.owed, t.next_seq, t.late_streak, t.wait_ema_s
        if not t.active:
            return None
        text = tuple(m.text_queue.popleft() for _ in range(min(len(m.text_queue), self.text_per_step)))
        video, video_seq = None, -1
        while m.videos and m.videos[0][0] <= t.seq:  # this chunk's frame (frames of skipped chunks are stale)
            _, video_seq, video = m.videos.popleft()
        aim = 0.0 if chunk is None else self.layout.aim_error(c, chunk.recv_mono)
        return PlannedRow(m.conversation, chunk, t.seq, t.late, text, video, aim, video_seq)
