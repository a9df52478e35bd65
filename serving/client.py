"""A conversation client: streams audio chunks (real-time paced or as fast as possible) and records every
server event with the client's clock. Used by ``duplex talk``, ``bench/serving.py`` and the tests.

Time axis (docs/design.md "Recorded conversations"): a file-driven client behaves like a microphone. A microphone
hands chunk k over only once its ``chunk_ms`` are captured, so chunk k is sent at capture start +
(k+1)·chunk_ms, and ``Conversation.start_us`` — sample 0 of the user's and the model's tracks — is the
capture start of chunk 0, one chunk before chunk 0 is sent. Latencies measured on the recorded tracks are then
measured from capture times, as a user hears them.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from duplex.v1 import duplex_pb2 as pb

from .resume_token import HOLDER_LOST_METADATA, RESUME_REPLICA_METADATA


def now_us() -> int:
    return time.time_ns() // 1000


class Clock(Protocol):
    """The client's clock: stamps events and paces sending. Tests inject one that steps instead of waiting."""

    def now_us(self) -> int:
        """Microseconds on the client's clock (any epoch; the server echoes it back)."""
        ...

    async def sleep_until(self, t_us: int) -> None:
        """Return once ``now_us() >= t_us`` (at once when it already is)."""
        ...


class SystemClock:
    """Wall-clock epoch, monotonic progress: readings never jump when the system time is adjusted."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def now_us(self) -> int:
        return (time.monotonic_ns() + self._offset_ns) // 1000

    async def sleep_until(self, t_us: int) -> None:
        delay_s = (t_us - self.now_us()) / 1e6
        if delay_s > 0:
            await asyncio.sleep(delay_s)


@dataclass
class Received:
    t_us: int
    """Client wall clock when the event arrived."""
    event: pb.ServerEvent


@dataclass
class Resumption:
    """One dropped stream the client resumed (or tried to)."""

    dropped_us: int
    """Client clock when the stream failed."""
    code: grpc.StatusCode
    """How it failed."""
    resumed_us: int = 0
    """Client clock when the resumed stream's SessionReady arrived (0 = never)."""
    resent: int = 0
    """Client events re-sent on the new stream (the engine had not read them)."""


@dataclass
class CaptureAxis:
    """A live microphone's chunk boundaries on the client's clock, and the recording's time axis they define.

    Chunk k is fully captured — and may leave — at ``capture_end_us(k)``: ``start_us + (k + 1) * chunk_us``,
    plus the re-aims (``PhaseAim``) in force from their first chunk on."""

    start_us: int = 0
    """Client clock at the capture start of the first audio chunk (its send time − ``chunk_us``): sample 0 of
    both tracks."""
    chunk_us: int = 0
    """Chunk length."""
    reaims: list[tuple[int, int]] = field(default_factory=list)
    """``(seq, µs)``: from chunk ``seq`` on, capture boundaries moved this much later (negative: earlier)."""

    def shift_us(self, seq: int) -> int:
        """How much later than ``start_us + (seq + 1) * chunk_us`` chunk ``seq`` was captured (re-aims)."""
        return sum(us for first, us in self.reaims if seq >= first)

    def capture_end_us(self, seq: int) -> int:
        """Client clock when chunk ``seq`` was fully captured: its send was due then."""
        return self.start_us + (seq + 1) * self.chunk_us + self.shift_us(seq)

    def axis_us(self, t_us: int) -> int:
        """Client time ``t_us`` on the recording's time axis: µs after sample 0 of the user's input. Without
        re-aims that is ``t_us - start_us``; each re-aim takes its move out from where its first chunk's capture
        would have begun without it, so the model's audio stays where the user heard it against their own
        speech. A move later leaves client time that was never captured (it maps to that chunk's start); a
        move earlier, client time captured twice (the axis jumps ahead)."""
        x, moved, floor = t_us - self.start_us, 0, 0
        for first, us in self.reaims:
            if x <= first * self.chunk_us + moved:  # up to the end of the capture before it: the old aim
                break
            moved += us
            floor = first * self.chunk_us
        return max(floor, x - moved)


@dataclass
class Conversation(CaptureAxis):
    """What one ``converse`` call saw, on its capture axis."""

    sent_us: dict[int, int] = field(default_factory=dict)
    """Client clock when each audio chunk (by seq) was actually sent."""
    received: list[Received] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()
    resumptions: list[Resumption] = field(default_factory=list)
    """Streams that dropped and how each was resumed (``converse(resume=True)``)."""

    @property
    def ready(self) -> pb.SessionReady | None:
        for r in self.received:
            if r.event.HasField("ready"):
                return r.event.ready
        return None

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.event.WhichOneof("event") == kind]

    def agent_finished(self, call_ids: Sequence[str]) -> bool:
        """Has every call in ``call_ids`` had its DONE or FAILED ``AgentEvent``?"""
        done = {r.event.agent.job_id for r in self.of("agent") if r.event.agent.state in (pb.DONE, pb.FAILED)}
        return done.issuperset(call_ids)

    def audio_seqs(self) -> list[int]:
        return [r.event.audio.seq for r in self.of("audio")]

    def placements(self, sample_rate: int, model_time: bool = False) -> list[tuple[int, pb.ModelAudio]]:
        """Where each model audio chunk starts on the recorded time axis (sample 0 = ``start_us``; ``axis_us``).

        As heard (default): when the chunk arrived, or when the previous one finished playing if that is later
        — what a listener heard, network and batching delays included. Model time: at its ``output_sample``,
        the place the model gave it in its own output stream (sample 0 = the model's audio alongside the
        user's sample 0); arrival times do not move it, so runs with the same outputs compare byte for byte."""
        placed = []
        cursor = 0
        for r in self.of("audio"):
            a = r.event.audio
            if model_time:
                at = a.output_sample
            else:
                at = max(cursor, int(self.axis_us(r.t_us) * sample_rate / 1e6))
                cursor = at + a.samples
            placed.append((at, a))
        return placed

    def output_track(self, sample_rate: int, total_samples: int, model_time: bool = False) -> np.ndarray:
        """The model's audio as int16 samples placed by ``placements`` (silent chunks stay zero), cut to
        ``total_samples``."""
        out = np.zeros(total_samples, dtype=np.int16)
        for at, a in self.placements(sample_rate, model_time):
            if a.pcm and at < total_samples:
                pcm = np.frombuffer(a.pcm, dtype="<i2")[: total_samples - at]
                out[at : at + len(pcm)] = pcm
        return out


RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
"""A restarted front door is reached again within about 0.1-1 s (gRPC's default first backoff is 1 s, then
growing to 120 s), well inside a session's resume grace."""


def channel(target: str, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to the front door (Envoy) or an engine: TLS verified against the PEM CA bundle ``ca_file`` when
    given, else plaintext."""
    if ca_file is None:
        return grpc.aio.insecure_channel(target, options=RECONNECT_OPTIONS)
    root = Path(ca_file).read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.aio.secure_channel(target, creds, options=RECONNECT_OPTIONS)


def first_send_us(ready: pb.SessionReady, start_us: int, ready_us: int) -> int | None:
    """When to send chunk 0 on the client's clock, following the phase hint (None: the Ready has none).

    ``start_us``: the client time stamped into ``SessionStart.client_time_us``; ``ready_us``: when the Ready
    arrived. The hint counts from the Ready's departure, placed half the network round trip (start out,
    Ready back, less the engine's hold) before its arrival: while sessions join, either leg alone can be
    tens of milliseconds slow (the start behind the front door's admission and placement, the Ready behind other
    sessions' audio), and a chunk that arrives after its batch's deadline costs a whole cohort period.
    """
    if ready.send_in_us <= 0:
        return None
    network_us = max(0, ready_us - start_us - ready.start_held_us)
    return ready_us - network_us // 2 + ready.send_in_us


REAIM_WINDOW = 5
"""Outputs a steered client looks at before it may re-aim (``PhaseAim``)."""
REAIM_MIN_MS = 5.0
"""Re-aim only when the window's median aim error is at least this large: less is the spread of one cohort's
burst through gRPC, not a phase error (a cohort's 16 chunks arrive over ~5 ms, in a random order, on the
2-core VM; at 3 ms every session re-aimed 7-11 times a minute by ~4 ms, chasing that order)."""


@dataclass
class PhaseAim:
    """Keeps a steered client's chunks arriving when the engine aims them to (``ChunkTiming.aim_error_ms``).

    The phase hint (``first_send_us``) places the Ready's departure half a round trip back, so it is off by
    half the difference of the two legs: a few milliseconds while sessions join at a steady pace, tens when
    many join at the same instant (each start and Ready queues behind the others'). A chunk that arrives early
    waits for its cohort-mates (a cohort steps once its last member is in) — latency the user hears — and one
    that arrives late holds its cohort up or misses its step. The engine tells each chunk's error against the
    cohort's aim; after every ``REAIM_WINDOW`` outputs of chunks sent on the current aim the client moves its
    capture boundaries by minus the window's median error when that is ``REAIM_MIN_MS`` or more, from the
    first chunk whose capture has not begun: later when early (what lies between is never captured), earlier
    when late (that much is captured twice); nothing is sent before its capture ends. The aim is the
    cohort's, not the other members', so a cohort's members gather at it and stay there — no member chases
    another and the cohort never drifts into its neighbours' steps."""

    axis: CaptureAxis = field(default_factory=CaptureAxis)
    """The capture axis the moves go into (``CaptureAxis.reaims``)."""
    since_seq: int = 0
    """Outputs of chunks before this one were sent on an earlier aim: not counted."""
    errors_ms: list[float] = field(default_factory=list)

    def observe(self, audio: pb.ModelAudio, sent: int) -> int:
        """Take one output, with ``sent`` chunks sent so far; return how much later (µs; negative: earlier)
        the chunks are now captured (0: no change), recorded in ``axis.reaims`` from the first chunk whose
        capture has not begun: the one after chunk ``sent``, which is being captured now."""
        t = audio.timing
        if audio.seq < self.since_seq or t.substituted:
            return 0
        self.errors_ms.append(t.aim_error_ms)
        if len(self.errors_ms) < REAIM_WINDOW:
            return 0
        error = statistics.median(self.errors_ms)
        self.errors_ms.clear()
        if abs(error) < REAIM_MIN_MS:
            return 0
        self.since_seq = sent + 1
        shift = -round(error * 1000)
        self.axis.reaims.append((self.since_seq, shift))
        return shift


def start_event(
    model: str = "",
    chunk_ms: int = 0,
    sample_rate: int = 16000,
    instructions: str = "",
    tools: Sequence[str] = (),
    session_id: str = "",
    no_resume: bool = False,
    voice: str = "",
) -> pb.ClientEvent:
    """A ``SessionStart``; ``no_resume``: the client will not resume it, so the server issues no token and
    holds no slot for it after the stream ends (load generators, one-shot clients); ``voice``: PersonaPlex's
    voice for the session (``instructions`` is then its persona)."""
    fmt = pb.AudioFormat(sample_rate=sample_rate, channels=1, encoding=pb.PCM16_LE)
    return pb.ClientEvent(
        start=pb.SessionStart(
            model=model,
            format=fmt,
            chunk_ms=chunk_ms,
            instructions=instructions,
            tools=list(tools),
            session_id=session_id,
            no_resume=no_resume,
            voice=voice,
        )
    )


def audio_event(seq: int, pcm: bytes, t_us: int | None = None) -> pb.ClientEvent:
    return pb.ClientEvent(audio=pb.AudioChunk(seq=seq, pcm=pcm, client_time_us=now_us() if t_us is None else t_us))


def split_chunks(samples: np.ndarray, chunk_samples: int) -> list[bytes]:
    """int16 mono samples → PCM16 chunks, the last one zero-padded."""
    n = -(-len(samples) // chunk_samples)
    padded = np.zeros(n * chunk_samples, dtype="<i2")
    padded[: len(samples)] = samples
    return [padded[i * chunk_samples : (i + 1) * chunk_samples].tobytes() for i in range(n)]


RETRY_BACKOFF_S = 0.05
"""Pause before trying again a resume the engine or the front door refused for now (``RETRY_RESUME``)."""


def proxied_status(code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
    """A stream a proxy (Envoy) reset because its engine went away mid-conversation reaches gRPC as INTERNAL
    ("RST_STREAM with error code 2": gRPC maps every reset code but REFUSED_STREAM so); it is a dropped stream,
    reported as UNAVAILABLE like a dropped connection."""
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details:
        return grpc.StatusCode.UNAVAILABLE, f"stream reset by the proxy (its engine went away): {details}"
    return code, details


RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
"""How a dropped stream (client or server vanished, connection reset, front door gone) reaches the client."""
RETRY_RESUME = {grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}
"""A resume refused for now: the engine has not yet seen the old stream drop, or the front door's admission."""


class _Outgoing:
    """The client events after SessionStart, produced once by ``schedule`` and sent on one stream after
    another: the ones the engine may not have read are kept (at most ``limit``) to be re-sent on resume.

    The schedule is pulled through one shielded task, so a stream cancelled while it waits (for pacing or for
    flow control) never cancels the schedule itself: the next stream picks up where it was."""

    def __init__(self, schedule: AsyncIterator[pb.ClientEvent], limit: int) -> None:
        self.schedule = schedule
        self.limit = limit
        self.kept: collections.deque[pb.ClientEvent] = collections.deque()
        self.base = 0
        """Index (among all events after SessionStart) of ``kept[0]``."""
        self.audio_at: dict[int, int] = {}
        """Index of each kept audio chunk, by seq (its ModelAudio acknowledges it and all before it)."""
        self.done = False
        self._next: asyncio.Future[None] | None = None

    @property
    def end(self) -> int:
        return self.base + len(self.kept)

    async def _produce(self) -> None:
        ev = await anext(self.schedule, None)
        if ev is None:
            self.done = True
            return
        if ev.HasField("audio"):
            self.audio_at[ev.audio.seq] = self.end
        self.kept.append(ev)
        while len(self.kept) > self.limit:  # past the bound: a resume that needs these fails
            self.kept.popleft()
            self.base += 1

    async def pull(self) -> None:
        if self._next is None:
            self._next = asyncio.ensure_future(self._produce())
        await asyncio.shield(self._next)
        self._next = None

    def acknowledge(self, seq: int) -> None:
        """The engine answered audio chunk ``seq``: it has read every event up to it."""
        at = self.audio_at.pop(seq, None)
        if at is None:
            return
        for s in [s for s in self.audio_at if s < seq]:
            del self.audio_at[s]
        while self.base <= at and self.kept:
            self.kept.popleft()
            self.base += 1

    async def stream(self, first: int) -> AsyncIterator[pb.ClientEvent]:
        """The events from index ``first`` on (None: the ones before it are no longer kept)."""
        i = first
        while True:
            if i < self.base:
                raise LookupError(f"events {i}..{self.base - 1} are no longer kept for re-sending")
            while i < self.end:
                yield self.kept[i - self.base]
                i += 1
            if self.done:
                return
            await self.pull()

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()


Chunks = Sequence[bytes] | Callable[[pb.SessionReady], Sequence[bytes]]
"""The audio to send: PCM16 chunks, or a function that makes them from the negotiated ``SessionReady`` (its
format and chunk length: a client that lets the server choose, as ``duplex talk`` does)."""
Extra = Sequence[tuple[int, pb.ClientEvent]] | Callable[[pb.SessionReady], Sequence[tuple[int, pb.ClientEvent]]]
"""Events to send before the chunk of the given index, or a function that makes them from the ``SessionReady``
(called after ``Chunks``'s: ``duplex talk --video`` scales its frames to the ready's ``video_size``)."""


class ProtocolError(ValueError):
    """A server event the session's phase does not allow (a server bug): the conversation ends INTERNAL."""


class Phase(enum.Enum):
    """Where a client's conversation is (docs/serving.md "Session lifecycles")."""

    CONNECTING = "connecting"
    """SessionStart sent, no SessionReady yet."""
    READY = "ready"
    """SessionReady received (format and chunk length learned); no chunk sent yet."""
    STREAMING = "streaming"
    """Chunks going out, server events coming in."""
    DRAINING = "draining"
    """EndOfStream queued: the engine's last outputs coming in."""
    RESUMING = "resuming"
    """The stream dropped: reconnecting with the resume token until a resumed SessionReady or the grace ends."""
    CLOSED = "closed"
    """Over: ``Conversation.code`` says how."""


@dataclass
class Attempt:
    """One Converse call of a session: the first, or a resume."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the call's SessionReady arrived (or the call ended): its events may go out."""
    resend_from: int | None = None
    """Index of the first event after SessionStart this call sends (None: no SessionReady yet)."""
    expired: bool = False
    """The resume grace ran out while this call waited for its SessionReady."""
    call: grpc.aio.StreamStreamCall | None = None
    """The call, once made: its SessionStart goes out after the server's response headers (the call accepted)."""


class ClientSession:
    """A conversation's client side as a state machine: ``phase`` moves only in the ``on_*`` methods, each
    one event, and every time it reads comes from ``clock``. :func:`converse` drives it over gRPC; tests
    drive the methods directly."""

    def __init__(
        self,
        conv: Conversation,
        first: pb.ClientEvent,
        clock: Clock,
        steer: bool = True,
        resume: bool = True,
        on_event: Callable[[pb.ServerEvent], None] | None = None,
    ) -> None:
        """``first``: the SessionStart (already stamped); ``steer``: follow the phase hint and re-aim."""
        self.conv, self.first, self.clock = conv, first, clock
        self.steer, self.resume, self.on_event = steer, resume, on_event
        self.phase = Phase.CONNECTING
        self.history: list[tuple[int, Phase]] = [(clock.now_us(), Phase.CONNECTING)]
        """Each phase entered, with the client time it was entered at."""
        self.negotiated: pb.SessionReady | None = None
        self.send_0_us: int | None = None
        """Client time to send chunk 0 at (set by the first SessionReady)."""
        self.token, self.grace_us, self.seen = "", 0, 0
        """The session's resume token and grace, and the server events after SessionReady received so far."""
        self.drop: Resumption | None = None
        """The drop being resumed (or last resumed)."""
        self.aim = PhaseAim(conv) if steer else None
        self.acknowledge: Callable[[int], None] = lambda seq: None
        """Called with each answered audio seq (``_Outgoing.acknowledge``)."""
        self.produced: Callable[[], int] = lambda: 0
        """How many events after SessionStart the schedule has produced so far (``_Outgoing.end``)."""
        self.unsendable = ""
        """Why a resumed stream could not re-send what the engine had not read (the conversation ends)."""
        self.input_done = False
        """EndOfStream has been queued."""

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.history.append((self.clock.now_us(), phase))

    @property
    def resume_deadline_us(self) -> int:
        """Client time the resume grace of the current drop ends at."""
        assert self.drop is not None
        return self.drop.dropped_us + self.grace_us

    def start_event(self) -> pb.ClientEvent:
        """What the next call opens with: the SessionStart, or the resume of the dropped session."""
        if self.phase is Phase.RESUMING:
            return pb.ClientEvent(start=pb.SessionStart(resume_token=self.token, resume_events_seen=self.seen))
        return self.first

    def on_server_event(self, ev: pb.ServerEvent, attempt: Attempt) -> None:
        """Any server event: recorded at its arrival; a SessionReady moves the phase."""
        t = self.clock.now_us()
        self.conv.received.append(Received(t, ev))
        if self.on_event is not None:
            self.on_event(ev)
        if ev.HasField("ready"):
            self.on_ready(ev.ready, t, attempt)
            return
        self.seen += 1
        if ev.HasField("audio"):
            self.acknowledge(ev.audio.seq)
            if self.aim is not None:
                self.aim.observe(ev.audio, len(self.conv.sent_us))  # chunks go out in order from 0

    def on_ready(self, ready: pb.SessionReady, t_us: int, attempt: Attempt) -> None:
        """CONNECTING → READY (the session's terms learned), or RESUMING → STREAMING (a resumed stream;
        DRAINING when EndOfStream was already queued)."""
        if ready.resumed:
            if self.phase is not Phase.RESUMING or self.drop is None:
                raise ProtocolError(f"a resumed SessionReady while {self.phase.value}")
            self.drop.resumed_us = t_us
            self.drop.resent = self.produced() - ready.resume_events_received
            attempt.resend_from = ready.resume_events_received
            self._enter(Phase.DRAINING if self.input_done else Phase.STREAMING)
        else:
            if self.phase is not Phase.CONNECTING:
                raise ProtocolError(f"a second SessionReady while {self.phase.value}")
            self.negotiated = ready
            self.token, self.grace_us = ready.resume_token, ready.resume_grace_ms * 1000
            at = first_send_us(ready, self.first.start.client_time_us, t_us)
            self.send_0_us = at if self.steer and at is not None else t_us
            attempt.resend_from = 0
            self._enter(Phase.READY)
        attempt.ready.set()

    def on_sent(self, seq: int) -> int:
        """Audio chunk ``seq`` goes out now (READY → STREAMING at the first); returns its client time."""
        t = self.clock.now_us()
        self.conv.sent_us[seq] = t
        if self.phase is Phase.READY:
            self._enter(Phase.STREAMING)
        return t

    def on_input_end(self) -> pb.ClientEvent:
        """The last client event, EndOfStream, is queued: READY or STREAMING → DRAINING."""
        self.input_done = True
        if self.phase in (Phase.READY, Phase.STREAMING):
            self._enter(Phase.DRAINING)
        return pb.ClientEvent(end=pb.EndOfStream())

    def on_finished(self) -> Conversation:
        """The stream ended with OK: CLOSED. DATA_LOSS when a resume could not re-send what the engine missed,
        or when the engine ended the session before it had answered every chunk sent or before the client's
        EndOfStream (``unaccounted``): a conversation never ends OK with input the engine did not answer."""
        self.conv.code, self.conv.details, self.conv.trailing = grpc.StatusCode.OK, "", ()
        if self.unsendable:
            self.conv.code, self.conv.details = grpc.StatusCode.DATA_LOSS, f"resume: {self.unsendable}"
        elif missing := self.unaccounted():
            self.conv.code, self.conv.details = grpc.StatusCode.DATA_LOSS, f"server ended the stream OK {missing}"
        self._enter(Phase.CLOSED)
        return self.conv

    def unaccounted(self) -> str:
        """What an OK end leaves unanswered ("" when nothing): the chunks sent that no ModelAudio answered
        (a chunk silence stood in for is answered by that ModelAudio), and EndOfStream not yet queued."""
        unanswered = sorted(set(self.conv.sent_us) - set(self.conv.audio_seqs()))
        parts = []
        if unanswered:
            parts.append(
                f"with {len(unanswered)} of {len(self.conv.sent_us)} chunks sent unanswered (seq {_spans(unanswered)})"
            )
        if not self.input_done:
            parts.append(f"before the client's EndOfStream ({self.phase.value})")
        return " and ".join(parts)

    def on_failed(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]) -> bool:
        """The call ended with an error: RESUMING (returns True: call again) or CLOSED (False)."""
        self.conv.code, self.conv.details, self.conv.trailing = code, details, trailing
        now = self.clock.now_us()
        resuming = self.phase is Phase.RESUMING
        if not self.resume or not self.token or self.phase is Phase.CONNECTING:
            return self._close()  # failed before its session was ready, or not resumable: nothing to resume
        if resuming and HOLDER_LOST_METADATA in trailing:
            return self._close()  # the engine holding the session is gone, and the session with it
        if not ((resuming and code in RETRY_RESUME) or code in RESUMABLE):
            return self._close()  # refused: NOT_FOUND, PERMISSION_DENIED, DATA_LOSS, ...
        if not resuming:
            self.drop = Resumption(now, code)
            self.conv.resumptions.append(self.drop)
            self._enter(Phase.RESUMING)
        if now >= self.resume_deadline_us:
            return self._close()
        return True

    def on_resume_expired(self) -> Conversation:
        """No resumed SessionReady within the grace: CLOSED with the drop's own code."""
        assert self.drop is not None  # the grace runs only while resuming
        self.conv.code = self.drop.code  # the drop is what ended it; the resume only failed to undo it
        self.conv.details = (
            f"resume: no SessionReady within the session's resume grace ({self.grace_us // 1000} ms) "
            f"after the stream dropped ({self.drop.code.name})"
        )
        self._enter(Phase.CLOSED)
        return self.conv

    def on_protocol_error(self, what: str) -> Conversation:
        """The server broke the protocol: CLOSED with INTERNAL naming what it sent."""
        self.conv.code, self.conv.details, self.conv.trailing = grpc.StatusCode.INTERNAL, f"server: {what}", ()
        self._enter(Phase.CLOSED)
        return self.conv

    def _close(self) -> bool:
        self._enter(Phase.CLOSED)
        return False


def _spans(seqs: Sequence[int]) -> str:
    """Sorted sequence numbers as spans: ``[1, 2, 3, 7]`` → ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for s in seqs:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


@dataclass
class _Script:
    """What a conversation sends after SessionStart and when (``converse``'s arguments)."""

    chunks: Chunks
    realtime: bool
    start_delay_s: float
    extra: Extra
    hold_open: Callable[[Conversation], bool] | None
    max_hold_s: float

    async def events(self, session: ClientSession) -> AsyncIterator[pb.ClientEvent]:
        """Every client event after SessionStart, at its time (starts once the session is negotiated)."""
        conv, clk = session.conv, session.clock
        assert session.negotiated is not None
        chunks = self.chunks
        if callable(chunks):
            chunks = chunks(session.negotiated)
            conv.chunk_us = session.negotiated.chunk_ms * 1000
        extra_at: dict[int, list[pb.ClientEvent]] = {}
        for i, ev in self.extra(session.negotiated) if callable(self.extra) else self.extra:
            extra_at.setdefault(i, []).append(ev)
        send_0 = (session.send_0_us if session.send_0_us is not None else clk.now_us()) + round(
            self.start_delay_s * 1e6
        )
        await clk.sleep_until(send_0)
        # capture start: chunk 0 is complete at send_0 — a microphone's clock, which a busy event loop does not
        # shift (a late wake-up sends late; the schedule stays where capture put it)
        conv.start_us = (send_0 if self.realtime else clk.now_us()) - conv.chunk_us
        for seq, pcm in enumerate(chunks):
            if self.realtime:
                await clk.sleep_until(conv.capture_end_us(seq))
            for ev in extra_at.get(seq, []):
                yield ev
            yield audio_event(seq, pcm, session.on_sent(seq))
        for ev in [ev for i in sorted(extra_at) if i >= len(chunks) for ev in extra_at[i]]:
            yield ev
        async for ev in self._hold(session, len(chunks), bytes(len(chunks[0])) if chunks else b""):
            yield ev
        yield session.on_input_end()

    async def _hold(self, session: ClientSession, n: int, silence: bytes) -> AsyncIterator[pb.ClientEvent]:
        """Silent chunks after the last one while ``hold_open`` says so, for at most ``max_hold_s``."""
        conv, clk = session.conv, session.clock
        seq, hold_us = n, clk.now_us()
        while (
            self.hold_open is not None
            and silence
            and seq < n + round(self.max_hold_s * 1e6 / conv.chunk_us)
            and self.hold_open(conv)
        ):
            await clk.sleep_until(hold_us + (seq - n + 1) * conv.chunk_us)  # real time even with --fast
            yield audio_event(seq, silence, session.on_sent(seq))
            seq += 1


async def converse(
    channel: grpc.aio.Channel,
    chunks: Chunks,
    chunk_ms: int = 200,
    realtime: bool = True,
    start: pb.ClientEvent | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    extra: Extra = (),
    start_delay_s: float = 0.0,
    follow_hint: bool = True,
    stamp_start: bool = True,
    clock: Clock | None = None,
    hold_open: Callable[[Conversation], bool] | None = None,
    max_hold_s: float = 0.0,
    resume: bool = True,
    resend_limit: int = 256,
    on_event: Callable[[pb.ServerEvent], None] | None = None,
) -> Conversation:
    """Hold one conversation: send ``start``, then the chunks, then EndOfStream; ``extra`` events are sent
    right before the chunk with the given index (``Extra``: or a function of the ``SessionReady``). When
    ``chunks`` is a function, it is called with the ``SessionReady`` and the chunk length is the ready's
    ``chunk_ms`` (``chunk_ms`` is then not used).

    Chunk k is sent once it would have been captured by a microphone: at ``Conversation.capture_end_us(k)``
    (``start_us + (k + 1) * chunk_ms``, plus any re-aim) when ``realtime``, else as fast as the stream takes it
    (``start_us`` is then one chunk before chunk 0 is sent, all the same). A real-time client follows the
    server's phase hint (``SessionReady.send_in_us``, ``first_send_us``): chunk 0 goes out then, so its chunks
    reach the engine just before their batch's step; and it re-aims from its chunks' aim errors
    (``ChunkTiming.aim_error_ms``, ``PhaseAim``), recorded in ``Conversation.reaims``. ``follow_hint=False``
    sends at once and never re-aims (a free-running client);
    ``start_delay_s`` delays either further. ``stamp_start`` puts the client's clock into ``start`` (when it
    has none), which asks for the hint. ``clock`` stamps and paces everything (default: ``SystemClock``).
    ``hold_open``: after the last chunk, keep sending silent chunks (as an open microphone would) while it
    returns True, for at most ``max_hold_s`` seconds (``duplex talk --call`` waits for its results so).
    Extra events at an index past the last chunk go out after it.

    ``resume``: when the stream drops (UNAVAILABLE or CANCELLED: the connection, the front door or the client's
    network went away) within the session's resume grace, reconnect on the same channel with the
    ``SessionReady.resume_token``, receive what the engine sent meanwhile and re-send the events it had not
    read (at most ``resend_limit`` are kept), then go on; the chunks keep their real-time schedule, so those
    captured while disconnected go out at once. It gives up (the conversation's code says why) when the grace
    is over (the drop's own UNAVAILABLE or CANCELLED, its details saying the resume timed out), when the
    resume is refused (NOT_FOUND, PERMISSION_DENIED, ...; UNAVAILABLE with the ``HOLDER_LOST_METADATA``
    trailer when the engine that held the session is down) or when events the engine needs are no longer
    kept (DATA_LOSS). ``on_event`` sees every server event as it arrives.

    The session moves through ``Phase`` (connecting → ready → streaming → draining → closed, resuming
    after a drop) in a
    :class:`ClientSession`, one method per event (docs/serving.md "Session lifecycles")."""
    clk = clock if clock is not None else SystemClock()
    first = pb.ClientEvent()
    first.CopyFrom(start if start is not None else start_event(chunk_ms=chunk_ms))
    if stamp_start and first.HasField("start") and not first.start.client_time_us:
        first.start.client_time_us = clk.now_us()
    session = ClientSession(
        Conversation(chunk_us=chunk_ms * 1000), first, clk, realtime and follow_hint, resume, on_event
    )
    script = _Script(chunks, realtime, start_delay_s, extra, hold_open, max_hold_s)
    outgoing = _Outgoing(script.events(session), resend_limit)
    session.acknowledge, session.produced = outgoing.acknowledge, lambda: outgoing.end
    rpc = channel.stream_stream(
        "/duplex.v1.Duplex/Converse",
        request_serializer=pb.ClientEvent.SerializeToString,
        response_deserializer=pb.ServerEvent.FromString,
    )
    try:
        again = True
        while again:
            again = await _attempt(session, rpc, outgoing, tuple(metadata))
        return session.conv
    finally:
        outgoing.close()


async def _attempt(
    session: ClientSession,
    rpc: grpc.aio.StreamStreamMultiCallable,
    outgoing: _Outgoing,
    metadata: tuple[tuple[str, str], ...],
) -> bool:
    """One Converse call of ``session`` (the first, or a resume); returns whether to call again."""
    attempt, resuming = Attempt(), session.phase is Phase.RESUMING
    if resuming and session.negotiated is not None and session.negotiated.replica:
        metadata += ((RESUME_REPLICA_METADATA, session.negotiated.replica),)  # behind Envoy: the picker routes it
    call = rpc(_requests(session.start_event(), session, attempt, outgoing), metadata=metadata, wait_for_ready=resuming)
    attempt.call = call
    timer = _expire_timer(session, call, attempt) if resuming else None
    try:
        async for ev in call:
            session.on_server_event(ev, attempt)
            if timer is not None and ev.HasField("ready"):
                timer.cancel()
        session.on_finished()
        return False
    except grpc.aio.AioRpcError as e:
        trailing = tuple((k, str(v)) for k, v in (e.trailing_metadata() or ()))
        again = session.on_failed(*proxied_status(e.code(), e.details() or ""), trailing)
    except asyncio.CancelledError:
        if not attempt.expired:
            raise
        session.on_resume_expired()
        return False
    except ProtocolError as e:
        call.cancel()
        session.on_protocol_error(str(e))
        return False
    finally:
        attempt.ready.set()  # release the request generator if the call ended before SessionReady
        if timer is not None:
            timer.cancel()
    if again and resuming:
        await asyncio.sleep(RETRY_BACKOFF_S)  # not a tight loop while the front door is still away
    return again


async def _requests(
    start: pb.ClientEvent, session: ClientSession, attempt: Attempt, outgoing: _Outgoing
) -> AsyncIterator[pb.ClientEvent]:
    """One call's client events: its SessionStart, then (once its SessionReady came) the session's events
    from where the engine's reading stopped.

    SessionStart waits for the response headers, which a server sends on accepting the call: a refusal
    before that (Envoy's reply when the picker refuses or is gone: trailers only) must not meet a write in
    flight, or gRPC reports "Internal error from Core" in place of the refusal's status."""
    if attempt.call is not None:
        await attempt.call.initial_metadata()
        if attempt.call.done():
            return
    yield start
    await attempt.ready.wait()  # stream events only once the session is negotiated (or resumed)
    if attempt.resend_from is None:
        return  # the call ended before its SessionReady
    try:
        async for ev in outgoing.stream(attempt.resend_from):
            yield ev
    except LookupError as e:  # cannot re-send what the engine missed: end the conversation
        session.unsendable = f"{e} (resend_limit {outgoing.limit})"


def _expire_timer(session: ClientSession, call: grpc.aio.StreamStreamCall, attempt: Attempt) -> asyncio.TimerHandle:
    """Cancel a resuming ``call`` that has no SessionReady when the grace (on the session's clock) ends."""

    def expire() -> None:
        attempt.expired = True
        call.cancel()

    left_s = max(0.0, (session.resume_deadline_us - session.clock.now_us()) / 1e6)
    return asyncio.get_running_loop().call_later(left_s, expire)
