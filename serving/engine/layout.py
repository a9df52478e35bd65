"""The cohort layout: the slots split into contiguous cohort blocks, who holds which slot, and when ticks come.

Pure bookkeeping for the step planner (``planner.py``): the cohorts and their tick phases, reservations made by
the phase hint, placement of a new session (by its hint or by its arrival), swap-remove on unplacement and the
move of a migrating session — the slot moves and resets these imply are returned as ``SlotMove``/``SlotReset``
ops for the executor. It reads no clock (every time is an argument), counts nothing and logs nothing. When a
step is due and what it consumes is decided per cohort in ``decision.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .session import SlotSession

SEND_LEAD_S = 0.030
"""A steered client is told to send so that its chunks would arrive this long before its cohort's tick if
nothing were in transit. Early is cheap and late is dear: a cohort steps as soon as all its members are in,
so a lead costs no one any wait, while a first chunk that arrives after its tick's deadline puts its session
in the next cohort for good (a whole P / C of wait on every chunk). The hint's error while sessions join is
about ±20–40 ms on the 2-core VM (64 sessions joining at 32/s, ``client.first_send_us``); with 30 ms of lead
every steered session of such a ramp landed in its reserved cohort (docs/benchmarks.md)."""

PlacedBy = Literal["hint", "arrival", "no_hint"]
"""How a new session found its cohort: the one its phase hint reserved (its first chunk came near that tick),
the one ticking soonest after its first chunk (it had a reservation and missed it), or that without a hint."""


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
class SlotMove:
    """Copy the state of slot ``src`` into slot ``dst`` (compaction or migration)."""

    src: int
    dst: int


@dataclass(frozen=True)
class SlotReset:
    """Make ``slot`` a fresh session (with a prompt: its prefill starts, run a piece at a time between steps
    (``PlannedPiece``); the session is not stepped until it is done)."""

    slot: int
    prompt: object | None = None
    """The family's prompt object (``Prompted.prefill_start``), None = none."""
    sampling: object | None = None
    """The session's own sampling settings (``SessionSampling.set_sampling``), None = the model's."""


@dataclass(frozen=True)
class SlotEndInput:
    """The client of ``slot`` sent its last chunk (a family that goes on after its input: the steps that follow
    are the model's own tail)."""

    slot: int


@dataclass(frozen=True)
class SlotDropPrefill:
    """The session of ``slot`` left while its prompt was being prefilled: drop the prefill (and its staging
    state); the slot is left as it was."""

    slot: int


SlotOp = SlotMove | SlotReset | SlotEndInput | SlotDropPrefill


class CohortLayout:
    """``capacity`` slots in ``cohorts`` evenly phased blocks, and the sessions placed in them."""

    def __init__(self, capacity: int, cohorts: int, period_s: float, t0: float, grace_s: float) -> None:
        """``t0``: the monotonic time phases count from; ``grace_s``: how long past its tick a cohort waits."""
        self.period = period_s
        self.t0 = t0
        self.grace = grace_s
        n_cohorts = min(cohorts, capacity)
        block = math.ceil(capacity / n_cohorts)
        # evenly spaced tick phases: a chunk waits at most period / cohorts for its cohort's tick, and at
        # capacity the cohorts' steps are spread evenly over the period instead of queueing behind each other
        self.cohorts = [Cohort(i, i * block, block, phase_s=i * period_s / n_cohorts) for i in range(n_cohorts)]
        self.slots = n_cohorts * block
        """Rows of the model and codec state."""

    # ----- time (no mutation) ---------------------------------------------------------------------------
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

    # ----- where sessions go (no mutation) --------------------------------------------------------------
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

    def migration_target(self, current: Cohort, phase: float, waited: float) -> Cohort | None:
        """The cohort a member of ``current`` whose chunks arrive at ``phase`` (and waited ``waited`` on
        average) should move to: the one whose step comes soonest after that phase, if that at least halves
        its wait (None: stay)."""
        target = self.best_cohort(phase, exclude=current)
        if target is None or self.wait_for(target, phase) >= min(waited, self.wait_for(current, phase)) / 2:
            return None
        return target

    # ----- reservations ---------------------------------------------------------------------------------
    def reserve(self, s: SlotSession, not_before: float) -> float | None:
        """Reserve a place in the cohort with the most room (the soonest among equals) for a new session and
        return when, not before ``not_before``, its first chunk should arrive: ``SEND_LEAD_S`` before that
        cohort's tick (None: no room, or the session is placed or holds a reservation already)."""
        open_ = [c for c in self.cohorts if c.room > 0]
        if not open_ or s.cohort is not None or s.reserved is not None:
            return None

        def arrive_at(c: Cohort) -> float:
            return self.tick_after(c.phase_s, not_before + SEND_LEAD_S) - SEND_LEAD_S

        cohort = min(open_, key=lambda c: (-c.room, arrive_at(c)))
        cohort.reserved += 1
        s.reserved = cohort.index
        return arrive_at(cohort)

    def release(self, s: SlotSession) -> Cohort | None:
        """Drop a session's reservation; returns the cohort it had reserved."""
        if s.reserved is None:
            return None
        c = self.cohorts[s.reserved]
        c.reserved -= 1
        s.reserved = None
        return c

    # ----- placement --------------------------------------------------------------------------------------
    def claim(self, s: SlotSession) -> tuple[Cohort, PlacedBy] | None:
        """Release a new session's reservation and choose its cohort by its arrival phase (``s.arrival_phase_s``):
        the reserved one if its first chunk came near that tick, else the one ticking soonest after it (None:
        no room yet — a slot is still held by a session whose leave is queued)."""
        reserved = self.release(s)
        cohort = reserved if reserved is not None and self.reserved_fits(reserved, s.arrival_phase_s) else None
        how: PlacedBy = "no_hint" if reserved is None else "hint" if cohort is not None else "arrival"
        if cohort is None:
            cohort = self.best_cohort(s.arrival_phase_s)
        return None if cohort is None else (cohort, how)

    def join(self, s: SlotSession, cohort: Cohort, now: float) -> SlotReset:
        """Place a new session at the end of ``cohort``'s members; its slot starts fresh."""
        self._place(s, cohort, now)
        return SlotReset(s.slot, s.prompt, s.sampling)

    def unplace(self, s: SlotSession) -> list[SlotOp]:
        """Swap-remove ``s`` from its cohort block (the block's last member moves into its slot)."""
        if s.cohort is None:
            return []
        ops: list[SlotOp] = []
        c = self.cohorts[s.cohort]
        i = c.members.index(s)
        last = c.members[-1]
        if last is not s:
            ops.append(SlotMove(last.slot, s.slot))
            last.slot = s.slot
            c.members[i] = last
        c.members.pop()
        s.cohort, s.slot = None, -1
        return ops

    def move(self, s: SlotSession, target: Cohort, phase: float, now: float) -> list[SlotOp]:
        """Migrate a placed session to ``target`` (its chunks now arrive at ``phase``): its state moves to the
        end of the target's block and the last member of its old block fills the hole."""
        ops: list[SlotOp] = [SlotMove(s.slot, target.start + len(target.members))]
        ops += self.unplace(s)
        s.arrival_phase_s = phase
        self._place(s, target, now)
        return ops

    def _place(self, s: SlotSession, cohort: Cohort, now: float) -> None:
        slot = cohort.start + len(cohort.members)
        if not cohort.members:
            cohort.due = self.tick_after(cohort.phase_s, now - self.grace)
        cohort.members.append(s)
        s.cohort, s.slot = cohort.index, slot
