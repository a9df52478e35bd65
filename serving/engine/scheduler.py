"""The engine loop: planner → executor → output stage, one way.

    event loop ──inbox (chunks, text, video, end, leave)──▶ step thread: StepPlanner → StepExecutor
         ▲                                                                  │
         └──────── call_soon_threadsafe(OutputStage.publish, StepResult) ◀──┘

The event loop owns each session's ``Conversation`` and only puts messages into the inbox (park and resume
too: a session whose stream dropped, and its return); the step thread owns the ``StepPlanner`` (and its
``SlotSession``s) and the ``StepExecutor``'s tensors. The step thread hands back plain typed results; every
protobuf message is built by the output stage on the event loop. The only lock guards the planner for the two
questions the event loop asks it directly (a phase hint for a new session, and how many sessions are placed);
it is never held while the model runs or events are built. One step runs at a time (torch releases the GIL
while it computes); a turn of the step thread runs the step due, or else one piece of a prompt prefill
(``Turn``), so no step waits for more than the piece under way when it fell due.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from duplex.model.family import ServedModel

from ..metrics import EngineMetrics
from ..spec import EngineSpec
from .executor import PieceResult, StepExecutor, StepResult
from .output import OutputStage
from .planner import Cohort, Housekeeping, PlannedPiece, StepPlan, StepPlanner
from .session import Conversation, InputChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    conversation: Conversation
    chunk: InputChunk


@dataclass(frozen=True)
class Text:
    conversation: Conversation
    tokens: list[int]


@dataclass(frozen=True)
class Video:
    conversation: Conversation
    frame: torch.Tensor
    seq: int


@dataclass(frozen=True)
class End:
    conversation: Conversation


@dataclass(frozen=True)
class Park:
    conversation: Conversation


@dataclass(frozen=True)
class Resume:
    conversation: Conversation


@dataclass(frozen=True)
class Leave:
    conversation: Conversation


@dataclass(frozen=True)
class Stop:
    pass


InboxMessage = Chunk | Text | Video | End | Park | Resume | Leave | Stop


@dataclass(frozen=True)
class Turn:
    """What one turn of the step thread did (``Scheduler.turn``): the model step due, or else a piece of a
    prompt prefill (both only when steps were due for a whole period) — so a step waits for one piece at most,
    never for a whole prompt."""

    step: StepResult | None
    piece: PieceResult | None
    timeout: float | None
    """How long to wait for the inbox before the next turn (None: until a message comes)."""


def count_housekeeping(metrics: EngineMetrics, chores: Housekeeping) -> None:
    """Count (and log) what the planner decided between steps: placements by how, migrations."""
    for p in chores.placed:
        metrics.placements.labels(p.how).inc()
        log.debug(
            "placed in cohort %d by %s (phase %.1f ms, cohort phase %.1f ms, %d members)",
            p.cohort,
            p.how,
            p.arrival_phase_s * 1e3,
            p.cohort_phase_s * 1e3,
            p.members,
            extra={"session": p.conversation.id},
        )
    for m in chores.migrated:
        metrics.migrations.inc()
        log.info(
            "session moved from cohort %d to %d (phase %.0f ms)",
            m.src,
            m.dst,
            m.phase_s * 1e3,
            extra={"session": m.conversation.id},
        )


def count_step(metrics: EngineMetrics, plan: StepPlan | None) -> None:
    """Count a planned step by kind."""
    if plan is not None:
        metrics.steps.labels(plan.kind).inc()


class Scheduler:
    """Wires the stages of one replica and runs the step thread."""

    def __init__(
        self,
        served: ServedModel[Any],
        spec: EngineSpec,
        chunk_ms: int,
        metrics: EngineMetrics,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec, self.metrics, self.loop, self.clock = spec, metrics, loop, clock
        self.served = served
        fmt = served.format
        self.period = chunk_ms / 1000.0
        frames = served.frames_per_chunk(chunk_ms)
        self.chunk_samples = frames * fmt.frame_samples
        self.frame_samples = fmt.frame_samples
        self.capacity = spec.max_sessions
        self.t0 = clock()
        self.wall_offset_us = time.time_ns() // 1000 - int(self.t0 * 1e6)
        tail = self.chunk_samples if fmt.continues_after_input else 0
        self.planner = StepPlanner(spec, self.period, self.t0, frames * fmt.text_in_slots, tail)
        self.executor = StepExecutor(served, self.planner.slots, self.chunk_samples, spec.batch_invariant, clock)
        self.output = OutputStage(
            metrics, fmt.sample_rate, self.chunk_samples, spec.lost_after_chunks, self.wall_us, clock
        )
        self.planner_lock = threading.Lock()
        """Guards the planner (and ``step_ms``/``trace``) between the step thread and the event loop."""
        self.inbox: queue.SimpleQueue[InboxMessage] = queue.SimpleQueue()
        self.conversations: set[Conversation] = set()
        """Admitted sessions (event loop only)."""
        self.step_ms: collections.deque[float] = collections.deque(maxlen=200)
        self.trace: collections.deque[tuple[float, int, int, int, str, float]] = collections.deque(maxlen=2000)
        """Recent steps: (start monotonic, cohort, rows, active rows, kind, compute ms) — for diagnosis and the
        load; a prefill piece is (start, -1, 1, 0, "prefill", ms)."""
        self._thread = threading.Thread(target=self._run, name="duplex-step", daemon=True)
        self.on_fatal: Callable[[BaseException], None] | None = None
        metrics.capacity.set(self.capacity)

    @property
    def cohorts(self) -> list[Cohort]:
        return self.planner.cohorts

    def wall_us(self, mono: float) -> int:
        return self.wall_offset_us + int(mono * 1e6)

    # ----- event loop ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.inbox.put(Stop())
        self._thread.join(timeout=10)

    def admit(self, conv: Conversation) -> bool:
        """Reserve capacity for a new conversation (False = replica full)."""
        if len(self.conversations) >= self.capacity:
            return False
        self.conversations.add(conv)
        self.metrics.active_sessions.set(len(self.conversations))
        return True

    def steer(self, conv: Conversation, not_before: float) -> float | None:
        """The phase hint for a new session (see ``StepPlanner.reserve``)."""
        with self.planner_lock:
            return self.planner.reserve(conv.slot_session, not_before)

    def submit(self, conv: Conversation, chunk: InputChunk) -> None:
        """Queue a validated chunk (a chunk that comes too late is answered LATE_CHUNK_DROPPED)."""
        conv.chunks_in_flight += 1
        self.inbox.put(Chunk(conv, chunk))

    def add_text(self, conv: Conversation, tokens: list[int]) -> None:
        conv.text_in_flight += len(tokens)
        self.inbox.put(Text(conv, tokens))

    def set_video(self, conv: Conversation, frame: torch.Tensor, seq: int) -> None:
        """Queue a validated video frame (``VideoFrame.seq`` ``seq``) for the next chunk the stream brings."""
        self.inbox.put(Video(conv, frame, seq))

    def end(self, conv: Conversation) -> None:
        """The client finished sending: process what is queued, then close the stream with OK."""
        self.inbox.put(End(conv))

    def park(self, conv: Conversation) -> None:
        """The session's stream dropped and it is kept for a resume: its cohort stops waiting for its chunks."""
        self.inbox.put(Park(conv))

    def resume(self, conv: Conversation) -> None:
        """A parked session has a stream again: its chunks are awaited again."""
        self.inbox.put(Resume(conv))

    def leave(self, conv: Conversation) -> None:
        """Free the session's slot (idempotent; the step thread compacts between steps)."""
        if conv in self.conversations:
            self.conversations.discard(conv)
            conv.left = True
            self.metrics.active_sessions.set(len(self.conversations))
            self.inbox.put(Leave(conv))

    def active_count(self) -> int:
        return len(self.conversations)

    def placed_count(self) -> int:
        with self.planner_lock:
            return self.planner.placed_count()

    def step_ms_p50(self) -> float:
        with self.planner_lock:
            return statistics.median(self.step_ms) if self.step_ms else 0.0

    # ----- step thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        try:
            timeout: float | None = None
            while (turn := self.turn(self._receive(timeout))) is not None:
                timeout = turn.timeout
        except BaseException as exc:  # a crashed step thread must not leave clients hanging
            log.exception("step thread crashed")
            if self.on_fatal is not None:
                self.loop.call_soon_threadsafe(self.on_fatal, exc)

    def turn(self, messages: list[InboxMessage]) -> Turn | None:
        """One turn of the step thread: hand ``messages`` to the planner, carry out its housekeeping, run the
        step due now, if any, or else one piece of a prompt prefill under way (``StepPlanner.next_piece``).
        None = stop."""
        now = self.clock()
        with self.planner_lock:
            if self._apply(messages):
                return None
            chores = self.planner.housekeeping(now)
            plan, wake = self.planner.next_step(now, self._load(now))
            piece = self.planner.next_piece(now, plan is not None)
        count_housekeeping(self.metrics, chores)
        count_step(self.metrics, plan)
        self.executor.apply(chores.slot_ops)
        for conv in chores.finished:
            self.loop.call_soon_threadsafe(self.output.finish, conv)
        result = None if plan is None else self._step(plan)
        ran = None if piece is None else self._piece(piece)
        if plan is not None or piece is not None:
            return Turn(result, ran, 0.0)  # look again at once: another cohort or piece may be due
        return Turn(None, None, None if wake is None else max(0.0, wake - self.clock()))

    def _step(self, plan: StepPlan) -> StepResult:
        result = self.executor.run(plan)
        with self.planner_lock:
            for r in result.rows:
                if r.done:
                    self.planner.tail_done(r.row.conversation.slot_session)
            self.step_ms.append(result.compute_ms)
            self.trace.append(
                (result.started, plan.cohort, len(plan.rows), len(result.rows), plan.kind, result.compute_ms)
            )
        self.loop.call_soon_threadsafe(self.output.publish, result)
        return result

    def _piece(self, piece: PlannedPiece) -> PieceResult:
        started = self.clock()
        ran = self.executor.prefill_piece(piece)
        with self.planner_lock:
            if ran.done:
                self.planner.prefilled(piece.session)
            self.trace.append((started, -1, 1, 0, "prefill", ran.seconds * 1e3))
        if ran.done:
            self.metrics.prompt_prefill_seconds.observe(ran.total_seconds)
            log.info(
                "session prompt prefilled in %.1f ms over %d pieces (%.1f ms from its first piece)",
                ran.total_seconds * 1e3,
                ran.pieces,
                ran.elapsed_seconds * 1e3,
                extra={"session": piece.session.conversation.id},
            )
        return ran

    def _receive(self, timeout: float | None) -> list[InboxMessage]:
        """Wait up to ``timeout`` (None = until something arrives) for the inbox, then take all of it."""
        messages: list[InboxMessage] = []
        try:
            messages.append(self.inbox.get(timeout=timeout))
            while True:
                messages.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return messages

    def _apply(self, messages: list[InboxMessage]) -> bool:
        """Hand the event loop's messages to the planner (True = stop)."""
        for m in messages:
            if isinstance(m, Chunk):
                if not self.planner.add_chunk(m.conversation.slot_session, m.chunk):
                    self.loop.call_soon_threadsafe(self.output.dropped, m.conversation, m.chunk.seq)
            elif isinstance(m, Text):
                self.planner.add_text(m.conversation.slot_session, m.tokens)
            elif isinstance(m, Video):
                self.planner.set_video(m.conversation.slot_session, m.frame, m.seq)
            elif isinstance(m, End):
                self.planner.end(m.conversation.slot_session)
            elif isinstance(m, Park):
                self.planner.park(m.conversation.slot_session)
            elif isinstance(m, Resume):
                self.planner.resume(m.conversation.slot_session)
            elif isinstance(m, Leave):
                self.planner.leave(m.conversation.slot_session)
            else:
                return True
        return False

    def _load(self, now: float) -> float:
        """Share of the last two chunk periods the step thread spent computing."""
        busy = 0.0
        for t, _, _, _, _, ms in reversed(self.trace):
            if t < now - 2 * self.period:
                break
            busy += ms / 1000.0
        return busy / (2 * self.period)
