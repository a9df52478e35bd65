"""Phase-cohort continuous batching: the heart of the engine.

Clients send chunks on their own clocks, so sessions differ in *phase* within the chunk period P. The slot
capacity is split into C cohorts of contiguous slots; cohort i ticks at phase i·P/C and steps once per
period, as soon as every member's next chunk is in, or at its deadline ``tick + grace`` without the late
ones. A new session joins the cohort (with room) whose tick comes soonest after its first chunk arrived,
so a chunk waits at most ≈ P / C for its step — never for a global tick — and a lone session not at all.
Better still, ``steer`` reserves the cohort with the most room for a new session and tells its client when
to send (the phase hint in SessionReady): a steered cohort's members arrive together and wait for no one.
Sessions are packed at the front of their cohort's block, so one ``model.step`` runs on the contiguous rows
``start .. start+n`` through views.

Late-chunk policy (docs/serving.md has the long form):
  * A member missing at a deadline step is computed as an inactive row (nothing committed). When its chunk
    arrives the cohort runs a catch-up step at once, with only the members holding overdue chunks active,
    on the smallest slot range that holds them.
    The same holds for a chunk of a session that joined the cohort just after its step.
  * Each member keeps ``owed`` = its cohort's regular steps since it joined − chunks it consumed. While a
    client sends nothing, every regular step adds one; once it owes more than ``lost_after_chunks``, silence
    is processed in place of its oldest missing chunk, the client gets a ``CHUNK_LOST`` warning and the real
    chunk is dropped (``LATE_CHUNK_DROPPED``) when it finally arrives. A member that has caught up with all
    it sent is re-based to owe nothing (after a stall its chunks simply arrive at a later phase), and a
    client sending faster than real time owes a negative amount: it is never declared lost for that.
  * A member with two or more chunks waiting (a burst after a stall, or a client sending faster than real
    time) also triggers an immediate catch-up step.
  * Split steps (latency at low load): while the step thread was busy less than ``split_below_load`` of the
    last two periods, members whose chunks have waited ``split_after_ms`` for the rest of their cohort are
    stepped without them (at most once per cohort and tick, never while a member is behind); they are then
    ahead (owe −1) for this tick only and do not hold back its regular step.
  * A session that misses ``migrate_after_misses`` regular steps in a row, or whose chunks wait on average
    more than P / (2C) for their step, is moved (``state.move``) to the cohort whose step comes soonest after
    its chunks' arrival phase, when that at least halves its wait.
A cohort with no chunk at all at its deadline does not step: a conversation whose client pauses is paused.

One step runs at a time on the dedicated step thread (torch releases the GIL); the asyncio side only
appends chunks under ``lock`` and receives results through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from duplex.model.codec import Codec, CodecState
from duplex.model.model import DuplexModel
from duplex.v1 import duplex_pb2 as pb

from ..metrics import EngineMetrics
from ..spec import EngineSpec
from .session import InputChunk, Session
from .turns import BACKCHANNEL, SPEAK

log = logging.getLogger(__name__)

VOICED_RMS = 0.01
"""Input frames louder than this (-40 dBFS RMS) count as user speech for the turn-latency metric."""
SEND_LEAD_S = 0.003
"""A steered client is told to send so that its chunks arrive this long before its cohort's tick (the
loopback/LAN transit and the client's timer jitter fit in it; the cohort steps once all members are in)."""


@dataclass
class Cohort:
    """A contiguous block of slots stepped together at one phase of the chunk period."""

    index: int
    start: int
    size: int
    members: list[Session] = field(default_factory=list)
    phase_s: float = 0.0
    """Tick phase within the period (seconds after the scheduler's t0, modulo the period)."""
    due: float = 0.0
    """Monotonic time of the next tick; the deadline is ``due + grace``."""
    split_for: float = -1.0
    """The tick (``due``) for which a split step already ran."""
    reserved: int = 0
    """Slots promised to new sessions that were told to send at this cohort's phase (``steer``)."""

    @property
    def room(self) -> int:
        return self.size - len(self.members) - self.reserved


@dataclass
class _Row:
    session: Session
    chunk: InputChunk | None
    """None = silence substituted for a lost chunk."""
    seq: int
    late: bool


@dataclass
class _Job:
    cohort: Cohort
    regular: bool
    rows: list[_Row | None]
    """One entry per member row; None = inactive row."""
    audio: torch.Tensor
    active: torch.Tensor
    text_in: torch.Tensor | None
    video: torch.Tensor | None
    video_rows: torch.Tensor | None
    first: int = 0
    """Offset of ``rows[0]`` within the cohort's block (catch-up steps run on a sub-range)."""
    start_mono: float = 0.0
    start_wall_us: int = 0


Delivery = list[tuple[Session, list[pb.ServerEvent], bool]]


class Scheduler:
    """Owns the slot table, the model's StreamState and the codec state of one replica."""

    def __init__(self, model: DuplexModel, codec: Codec, spec: EngineSpec, chunk_ms: int,
                 metrics: EngineMetrics, loop: asyncio.AbstractEventLoop) -> None:
        self.model, self.codec, self.spec, self.metrics, self.loop = model, codec, spec, metrics, loop
        cfg = model.cfg
        self.cfg = cfg
        self.period = chunk_ms / 1000.0
        self.frames = cfg.frames_per_chunk(chunk_ms)
        self.frame_samples = cfg.frame_samples
        self.chunk_samples = self.frames * cfg.frame_samples
        self.grace = spec.grace_ms / 1000.0
        self.capacity = spec.max_sessions
        n_cohorts = min(spec.cohorts, self.capacity)
        block = math.ceil(self.capacity / n_cohorts)
        # evenly spaced tick phases: a chunk waits at most period / cohorts for its cohort's tick, and at
        # capacity the cohorts' steps are spread evenly over the period instead of queueing behind each other
        self.cohorts = [Cohort(i, i * block, block, phase_s=i * self.period / n_cohorts) for i in range(n_cohorts)]
        self.state = model.new_state(n_cohorts * block)
        self.codec_state = codec.new_state(n_cohorts * block)
        self.lock = threading.Condition()
        self.sessions: set[Session] = set()
        self.unplaced: list[Session] = []
        self.leaving: list[Session] = []
        self.step_ms: collections.deque[float] = collections.deque(maxlen=200)
        self.trace: collections.deque[tuple[float, int, int, int, bool, float]] = collections.deque(maxlen=2000)
        """Recent steps: (start monotonic, cohort, rows, active rows, regular, compute ms) — for diagnosis."""
        self.t0 = time.monotonic()
        self.wall_offset_us = time.time_ns() // 1000 - int(self.t0 * 1e6)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="duplex-step", daemon=True)
        self.on_fatal: Callable[[BaseException], None] | None = None
        metrics.capacity.set(self.capacity)

    # ----- called from the event loop ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify_all()
        self._thread.join(timeout=10)

    def wall_us(self, mono: float) -> int:
        return self.wall_offset_us + int(mono * 1e6)

    def admit(self, session: Session) -> bool:
        """Reserve capacity for a new conversation (False = replica full)."""
        with self.lock:
            if len(self.sessions) >= self.capacity:
                return False
            self.sessions.add(session)
            self.metrics.active_sessions.set(len(self.sessions))
            return True

    def steer(self, session: Session, not_before: float) -> float | None:
        """Reserve a cohort for a new (admitted) session and return the phase hint: the monotonic time, not
        before ``not_before``, at which its first chunk should arrive so that every chunk arrives just
        before that cohort's tick (None: nothing to reserve).

        The cohort with the most room is chosen (the soonest among equals), so steered sessions spread
        evenly over the period and each step's members arrive together instead of waiting for each other.
        """
        with self.lock:
            open_ = [c for c in self.cohorts if c.room > 0]
            if not open_ or session.cohort is not None or session.reserved is not None:
                return None

            def arrive_at(c: Cohort) -> float:
                return self._tick_after(c.phase_s, not_before + SEND_LEAD_S) - SEND_LEAD_S

            cohort = min(open_, key=lambda c: (-c.room, arrive_at(c)))
            cohort.reserved += 1
            session.reserved = cohort.index
            return arrive_at(cohort)

    def _release(self, s: Session) -> Cohort | None:
        """Drop a session's reservation; returns the cohort it had reserved."""
        if s.reserved is None:
            return None
        c = self.cohorts[s.reserved]
        c.reserved -= 1
        s.reserved = None
        return c

    def _reserved_fits(self, c: Cohort, phase: float) -> bool:
        """Did a steered session's first chunk arrive near its reserved cohort's tick (it followed the hint)?"""
        early = (c.phase_s - phase) % self.period  # arrival before the tick
        return early <= self.period / (2 * len(self.cohorts)) or self.period - early <= self.grace

    def submit(self, session: Session, chunk: InputChunk) -> bool:
        """Queue a validated chunk. False = it came after silence was substituted for it (dropped)."""
        with self.lock:
            if chunk.seq < session.next_seq or session.left:
                return False
            session.pending.append(chunk)
            if session.cohort is None and session not in self.unplaced:
                self.unplaced.append(session)
            self.lock.notify()
            return True

    def add_text(self, session: Session, tokens: list[int]) -> None:
        with self.lock:
            session.text_queue.extend(tokens)

    def set_video(self, session: Session, frame: torch.Tensor) -> None:
        with self.lock:
            session.video = frame

    def end(self, session: Session) -> None:
        """The client finished sending: process what is queued, then close the stream with OK."""
        with self.lock:
            session.ended = True
            if session.cohort is None and session not in self.unplaced:
                self.unplaced.append(session)  # no audio at all: housekeeping finishes it
            self.lock.notify()

    def leave(self, session: Session) -> None:
        """Free the session's slot (idempotent; the step thread does the compaction between steps)."""
        with self.lock:
            if session in self.sessions:
                self.sessions.discard(session)
                session.left = True
                self.leaving.append(session)
                self.metrics.active_sessions.set(len(self.sessions))
                self.lock.notify()

    def pending_of(self, session: Session) -> int:
        with self.lock:
            return len(session.pending)

    def active_count(self) -> int:
        with self.lock:
            return len(self.sessions)

    def placed_count(self) -> int:
        with self.lock:
            return sum(len(c.members) for c in self.cohorts)

    def step_ms_p50(self) -> float:
        with self.lock:
            return statistics.median(self.step_ms) if self.step_ms else 0.0

    # ----- step thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        try:
            with self.lock:
                while not self._stopping:
                    now = time.monotonic()
                    delivery: Delivery = []
                    self._housekeeping(now, delivery)
                    job, wake = self._pick(now)
                    if job is None:
                        self._handover(delivery)
                        self.lock.wait(timeout=None if wake is None else max(0.0, wake - now))
                        continue
                    self.lock.release()
                    try:
                        self._handover(delivery)
                        result = self._compute(job)
                    finally:
                        self.lock.acquire()
                    self._commit(job, *result)
        except BaseException as exc:  # a crashed step thread must not leave clients hanging
            log.exception("step thread crashed")
            if self.on_fatal is not None:
                self.loop.call_soon_threadsafe(self.on_fatal, exc)

    def _handover(self, delivery: Delivery) -> None:
        if delivery:
            self.loop.call_soon_threadsafe(_deliver_all, delivery)

    def _tick_after(self, phase: float, t: float) -> float:
        k = math.ceil((t - self.t0 - phase) / self.period)
        return self.t0 + phase + k * self.period

    def _wait_for(self, cohort: Cohort, phase: float) -> float:
        """How long a chunk arriving at ``phase`` waits at most for ``cohort``'s next tick."""
        return (cohort.phase_s - phase) % self.period

    def _best_cohort(self, phase: float, exclude: Cohort | None = None) -> Cohort | None:
        """The cohort with room whose tick comes soonest after ``phase``."""
        rooms = [c for c in self.cohorts if c is not exclude and c.room > 0]
        return min(rooms, key=lambda c: (self._wait_for(c, phase), c.index)) if rooms else None

    def _place(self, s: Session, cohort: Cohort) -> None:
        slot = cohort.start + len(cohort.members)
        if not cohort.members:
            cohort.due = self._tick_after(cohort.phase_s, time.monotonic() - self.grace)
        cohort.members.append(s)
        s.cohort, s.slot = cohort.index, slot

    def _unplace(self, s: Session) -> None:
        """Swap-remove ``s`` from its cohort block (the block's last member moves into its slot)."""
        if s.cohort is None:
            return
        c = self.cohorts[s.cohort]
        i = c.members.index(s)
        last = c.members[-1]
        if last is not s:
            self.state.move(last.slot, s.slot)
            self.codec_state.move(last.slot, s.slot)
            last.slot = s.slot
            c.members[i] = last
        c.members.pop()
        s.cohort, s.slot = None, -1

    def _housekeeping(self, now: float, delivery: Delivery) -> None:
        for s in self.leaving:
            if s in self.unplaced:
                self.unplaced.remove(s)
            self._release(s)
            self._unplace(s)
        self.leaving.clear()
        for s in list(self.unplaced):
            if not s.pending:
                continue
            s.arrival_phase_s = (s.pending[0].recv_mono - self.t0) % self.period
            reserved = self._release(s)
            cohort = reserved if reserved is not None and self._reserved_fits(reserved, s.arrival_phase_s) else None
            how = "no_hint" if reserved is None else "hint" if cohort is not None else "arrival"
            if cohort is None:
                cohort = self._best_cohort(s.arrival_phase_s)
            if cohort is None:  # cannot happen: admission keeps sessions <= capacity
                continue
            self.unplaced.remove(s)
            self._place(s, cohort)
            self.metrics.placements.labels(how).inc()
            log.debug("placed in cohort %d (phase %.1f ms, cohort phase %.1f ms, %d members)", cohort.index,
                     s.arrival_phase_s * 1e3, cohort.phase_s * 1e3, len(cohort.members), extra={"session": s.id})
            self.state.reset(s.slot)
            self.codec_state.reset(s.slot)
        for c in self.cohorts:
            for s in list(c.members):
                if s.ended and not s.pending:
                    self._unplace(s)
                    self.sessions.discard(s)
                    self.metrics.active_sessions.set(len(self.sessions))
                    delivery.append((s, [], True))
                elif s.pending and (s.late_streak >= self.spec.migrate_after_misses
                                    or s.wait_ema_s > self.period / (2 * len(self.cohorts))):
                    self._migrate(s, c)
        for s in list(self.unplaced):
            if s.ended and not s.pending:
                self.unplaced.remove(s)
                self._release(s)
                self.sessions.discard(s)
                self.metrics.active_sessions.set(len(self.sessions))
                delivery.append((s, [], True))

    def _migrate(self, s: Session, current: Cohort) -> None:
        """Move a session whose chunks keep missing its cohort's step, or keep waiting long for it, to the
        cohort whose step comes soonest after its chunks arrive (an empty cohort: at once)."""
        s.late_streak = 0
        waited = s.wait_ema_s
        s.wait_ema_s = 0.0  # judge the new placement afresh
        phase = (s.pending[-1].recv_mono - self.t0) % self.period
        target = self._best_cohort(phase, exclude=current)
        if target is None:
            return
        if self._wait_for(target, phase) >= min(waited, self._wait_for(current, phase)) / 2:
            return
        new_slot = target.start + len(target.members)
        self.state.move(s.slot, new_slot)
        self.codec_state.move(s.slot, new_slot)
        self._unplace(s)  # the block's last member fills the hole
        s.arrival_phase_s = phase
        self._place(s, target)
        self.metrics.migrations.inc()
        log.info("session %s moved from cohort %d to %d (phase %.0f ms)", s.id, current.index, target.index,
                 phase * 1e3, extra={"session": s.id})

    def _pick(self, now: float) -> tuple[_Job | None, float | None]:
        """The most urgent cohort that should step now, or the time to look again."""
        best: tuple[float, Cohort, str] | None = None
        wake: float | None = None
        split_after = self.spec.split_after_ms / 1000.0
        spare = self._load(now) < self.spec.split_below_load
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
                c.due = self._tick_after(c.phase_s, now - self.grace)
            deadline = c.due + self.grace
            # members already ahead (stepped early by a split step, or sending faster than real time) do
            # not hold the cohort back
            all_in = any_pending and all(n > 0 or m.owed < 0 for n, m in zip(counts, c.members, strict=True))
            # overdue: waiting since before the previous deadline (it missed that step, or joined after it)
            overdue_before = deadline - self.period
            catchup = any(len(m.pending) >= 2
                          or (m.pending and (m.owed > 0 or m.pending[0].recv_mono < overdue_before))
                          for m in c.members)
            oldest = min((m.pending[0].recv_mono for m in c.members if m.pending), default=now)
            split_at = oldest + split_after
            # at most one split per tick, and none while a member is behind: then the cohort keeps to its regular
            # deadline steps, which are what judge that member's chunks lost
            can_split = split_after > 0 and spare and c.split_for != c.due and all(m.owed <= 0 for m in c.members)
            split = any_pending and can_split and now >= split_at
            if all_in or catchup or split or (any_pending and now >= deadline):
                regular = all_in or now >= deadline
                kind = "regular" if regular else "catchup" if catchup else "split"
                if kind == "split":
                    c.split_for = c.due
                if best is None or oldest < best[0]:
                    best = (oldest, c, kind)
            elif any_pending:
                soonest = min(deadline, split_at) if can_split else deadline
                wake = soonest if wake is None else min(wake, soonest)
        if best is None:
            return None, wake
        self.metrics.steps.labels(best[2]).inc()
        return self._gather(best[1], best[2] == "regular"), wake

    def _load(self, now: float) -> float:
        """Share of the last two chunk periods the step thread spent computing."""
        busy = 0.0
        for t, _, _, _, _, ms in reversed(self.trace):
            if t < now - 2 * self.period:
                break
            busy += ms / 1000.0
        return busy / (2 * self.period)

    def _gather(self, c: Cohort, regular: bool) -> _Job:
        n, F = len(c.members), self.frames
        audio = torch.zeros(n, self.chunk_samples)
        active = torch.zeros(n, dtype=torch.bool)
        slots = self.cfg.text_in_slots
        text_in: torch.Tensor | None = None
        videos: list[torch.Tensor] = []
        video_rows: list[int] = []
        rows: list[_Row | None] = []
        overdue_before = c.due + self.grace - self.period  # received before the last regular step's deadline
        for i, m in enumerate(c.members):
            if regular:
                m.owed += 1  # every regular step expects one chunk from every member
            if m.pending:
                chunk = m.pending.popleft()
                audio[i] = chunk.audio
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
                m.next_seq = chunk.seq + 1
                rows.append(_Row(m, chunk, chunk.seq, late))
            elif regular:
                if m.owed > 0:
                    m.late_streak += 1
                if m.owed <= self.spec.lost_after_chunks:
                    rows.append(None)
                    continue
                m.owed -= 1  # silence stands in for the oldest missing chunk
                rows.append(_Row(m, None, m.next_seq, True))
                m.next_seq += 1
            else:
                rows.append(None)
                continue
            active[i] = True
            if m.text_queue and slots:
                if text_in is None:
                    text_in = torch.full((n, F, slots), self.cfg.pad_token, dtype=torch.long)
                take = [m.text_queue.popleft() for _ in range(min(len(m.text_queue), F * slots))]
                text_in[i].view(-1)[: len(take)] = torch.tensor(take, dtype=torch.long)
            if m.video is not None:
                videos.append(m.video)
                video_rows.append(i)
                m.video = None
        first = 0
        if regular:
            c.due = self._tick_after(c.phase_s, max(time.monotonic() - self.grace, c.due) + 1e-6)
        elif (on := active.nonzero().flatten()).numel():  # a catch-up or split step: only the rows it spans
            first, last = int(on[0]), int(on[-1]) + 1
            rows, audio, active = rows[first:last], audio[first:last], active[first:last]
            text_in = None if text_in is None else text_in[first:last]
            video_rows = [r - first for r in video_rows]
        job = _Job(c, regular, rows, audio, active, text_in,
                   torch.stack(videos) if videos else None,
                   torch.tensor(video_rows, dtype=torch.long) if videos else None, first=first)
        job.start_mono = time.monotonic()
        job.start_wall_us = self.wall_us(job.start_mono)
        return job

    def _compute(self, job: _Job) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
        c, n = job.cohort, job.audio.shape[0]
        rows = slice(c.start + job.first, c.start + job.first + n)
        all_active = bool(job.active.all())
        out = self.model.step(self.state, job.audio, rows=rows, active=None if all_active else job.active,
                              text_in=job.text_in, video=job.video, video_rows=job.video_rows)
        speaking = (out.control == SPEAK) | (out.control == BACKCHANNEL)
        codes = torch.where(speaking, out.audio_codes, 0)  # listen/yield frames decode as silence
        cs = self.codec_state
        view = CodecState(cs.phase[rows], cs.amp[rows], cs.f0[rows], cs.noise_pos[rows])
        saved = None if all_active else [t.clone() for t in (view.phase, view.amp, view.f0, view.noise_pos)]
        wave = self.codec.decode(codes, view)
        if saved is not None:
            keep = ~job.active
            for t, old in zip((view.phase, view.amp, view.f0, view.noise_pos), saved, strict=True):
                t[keep] = old[keep]
        compute_ms = (time.monotonic() - job.start_mono) * 1e3
        return out.control, out.text_tokens, wave, job.audio, compute_ms

    def _commit(self, job: _Job, control: torch.Tensor, text: torch.Tensor, wave: torch.Tensor,
                audio_in: torch.Tensor, compute_ms: float) -> None:
        n, F, S = audio_in.shape[0], self.frames, self.frame_samples
        self.step_ms.append(compute_ms)
        self.trace.append((job.start_mono, job.cohort.index, n, int(job.active.sum()), job.regular, compute_ms))
        self.metrics.step_seconds.observe(compute_ms / 1e3)
        self.metrics.batch_size.observe(n)
        voiced = (audio_in.view(n, F, S).pow(2).mean(-1).sqrt() > VOICED_RMS).tolist()
        loud = (wave.abs().amax(dim=1) > 0).tolist()
        pcm16 = (wave * 32767.0).round().to(torch.int16)
        controls, texts = control.tolist(), text.tolist()
        send_wall_us = self.wall_us(time.monotonic())
        delivery: Delivery = []
        sr = self.cfg.sample_rate
        for i, row in enumerate(job.rows):
            if row is None:
                continue
            s, chunk = row.session, row.chunk
            if s.left:
                continue
            events: list[pb.ServerEvent] = []
            if chunk is None:
                self.metrics.chunks.labels("substituted").inc()
                events.append(pb.ServerEvent(warning=pb.Warning(
                    code="CHUNK_LOST", seq=row.seq,
                    message=f"audio chunk {row.seq} did not arrive within {self.spec.lost_after_chunks} steps "
                            "of its cohort; silence was processed in its place")))
                recv_us, client_us, wait_ms = job.start_wall_us, 0, 0.0
            else:
                self.metrics.chunks.labels("late" if row.late else "on_time").inc()
                wait_s = job.start_mono - chunk.recv_mono
                self.metrics.queue_wait_seconds.observe(wait_s)
                if job.regular and not row.late:
                    s.wait_ema_s += 0.3 * (wait_s - s.wait_ema_s)
                recv_us, client_us, wait_ms = chunk.recv_wall_us, chunk.client_time_us, wait_s * 1e3
            timing = pb.ChunkTiming(seq=row.seq, client_time_us=client_us, server_recv_us=recv_us,
                                    step_start_us=job.start_wall_us, server_send_us=send_wall_us,
                                    queue_wait_ms=wait_ms, compute_ms=compute_ms, batch_size=n,
                                    cohort=job.cohort.index, late=row.late, substituted=chunk is None)
            start = s.output_sample
            events.append(pb.ServerEvent(audio=pb.ModelAudio(
                seq=row.seq, pcm=pcm16[i].numpy().tobytes() if loud[i] else b"", samples=self.chunk_samples,
                output_sample=start, control=controls[i], timing=timing)))
            s.output_sample += self.chunk_samples
            piece = bytes(t for t in texts[i] if t < 256)
            final = self.cfg.eot_token in texts[i]
            if piece or final:
                delta = s.utf8.decode(piece, final=final)
                if delta or final:
                    events.append(pb.ServerEvent(text=pb.TextDelta(seq=row.seq, text=delta, final=final)))
            turn_events, latencies = s.turns.feed(row.seq, controls[i], voiced[i], start)
            events.extend(pb.ServerEvent(turn=t) for t in turn_events)
            for lat in latencies:
                self.metrics.turn_latency_seconds.observe(lat / sr)
            delivery.append((s, events, False))
        self._handover(delivery)


def _deliver_all(delivery: Delivery) -> None:
    for session, events, finished in delivery:
        session.deliver(events, finished)
