"""One conversation stream on the engine, as the transitions of its session's lifecycle (``lifecycle.Phase``),
whatever carries it: a ``Duplex.Converse`` gRPC stream or a Realtime WebSocket (``realtime.endpoint``), which
hand :meth:`EngineStream.run` the client's events as ``pb.ClientEvent`` objects. :meth:`EngineStream.accept`
checks the first message and finds the session (a new one, or the parked one a resume token names),
:meth:`EngineStream.attach` makes its SessionReady, :meth:`EngineStream.events` streams while attached, and
:meth:`EngineStream.detach` parks the session or closes it when the stream is over. Every time it reads comes
from the engine's clock."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from duplex.v1 import duplex_pb2 as pb

from ..logs import session_var
from ..resume_token import KEY_ID_METADATA, PLACEMENT_METADATA, RESUMABLE_METADATA
from . import validate as v
from .lifecycle import Lifecycle
from .session import Conversation

if TYPE_CHECKING:
    from .server import EngineServer

log = logging.getLogger("duplex.serving.engine.server")

STEER_MARGIN_S = 0.03
"""A steered client's first chunk is due at least this long after its start arrived (room for the
SessionReady to reach it)."""


class Refused(v.InputError):
    """A SessionStart the engine cannot take now, with trailing metadata for the client (``retry-after-ms``)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, message)
        self.trailing = trailing


class EngineStream:
    """One Converse stream and the session it holds."""

    def __init__(self, server: EngineServer, peer: str = "") -> None:
        self.server = server
        self.clock = server.clock
        self.peer = peer
        """The client's address (for the log)."""
        self.session: Conversation | None = None
        """Set by a handshake that succeeded."""
        self.ready = pb.SessionReady()
        self.resumed = False
        self.started = 0.0
        """Clock reading when the first message arrived."""
        self.client_us = 0
        """The client's clock in its SessionStart (0: none, no phase hint)."""
        self.instruction_tokens: list[int] = []
        self.dropped = True
        """Until the stream ends as the protocol says: a cancel or a failed write is a dropped stream."""
        self.lost = False
        """This stream's reader saw it fail: the writer stops and parks the session. Kept per stream, not per
        session: a reader that outlived its stream must not end the stream that resumed the session."""
        self.reader_stopped = True
        """Whether no one reads the client's stream when ``run`` raises (a refused start, or a reader that
        stopped at bad input): a gRPC transport drains it before its status."""

    # ----- the session path, shared by both transports -----------------------------------------------------
    async def run(
        self,
        first: pb.ClientEvent | v.Undecodable,
        rest: AsyncIterator[pb.ClientEvent | v.Undecodable],
        metadata: dict[str, str],
        stream_done: asyncio.Event,
    ) -> AsyncIterator[pb.ServerEvent]:
        """One stream through its session's lifecycle: accept ``first`` (HANDSHAKE), attach (the SessionReady),
        the server events while attached, then finish and detach. ``rest`` are the client's further events (a
        gRPC request stream, or the Realtime endpoint's events handed over in-process); ``stream_done`` is set
        when the transport is over. A start the engine cannot take, and a session that closed with a status,
        raise ``v.InputError`` (after the session was detached): the transport answers it its own way."""
        try:
            session = self.accept(first, metadata)
        except v.InputError as e:
            self.server.metrics.errors.labels(e.code.name).inc()
            raise
        token = session_var.set(session.id)
        reader: asyncio.Task[None] | None = None
        try:
            yield self.attach()
            reader = asyncio.create_task(self.server._read(rest, session, self.resumed, stream_done, self.on_lost))
            async for event in self.events():
                yield event
            if self.dropped:
                self.unfinished(stream_done)
                return
            self.finish(reader)
        finally:
            if reader is not None:
                reader.cancel()
            self.detach()
            session_var.reset(token)

    def accept(self, first: pb.ClientEvent | v.Undecodable, metadata: dict[str, str]) -> Conversation:
        """Check the first message and take its session: a new one (admitted to a slot) or the parked one its
        resume token names; ``InputError`` naming the field (or the reason) when it cannot."""
        server = self.server
        self.started = self.clock()
        kind = v.event_kind(first)
        if kind != "start" or not isinstance(first, pb.ClientEvent):
            raise v.InputError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{kind} before session start: the first ClientEvent must be `start`",
            )
        if server.draining:
            raise v.InputError(grpc.StatusCode.UNAVAILABLE, "engine is shutting down; reconnect")
        key_id = metadata.get(KEY_ID_METADATA, "")
        server.saw_placement(metadata.get(PLACEMENT_METADATA, ""))
        if first.start.resume_token:
            self.session = self._claim(first.start, key_id)
            self.resumed = True
            return self.session
        resumable = server.resumes.enabled and metadata.get(RESUMABLE_METADATA, "1") != "0"
        resumable = resumable and not first.start.no_resume
        self.session = self._open(first.start, resumable, key_id)
        self.client_us = first.start.client_time_us
        return self.session

    def _open(self, start: pb.SessionStart, resumable: bool, key_id: str) -> Conversation:
        """A new session for ``start`` holding a slot, and its SessionReady."""
        server, sched = self.server, self.server.scheduler
        assert sched is not None and server.agent is not None
        neg = v.check_start(start, server.served, server.model_name, server.spec.chunk_ms, server.spec.tools)
        sid = neg.session_id or uuid.uuid4().hex[:12]
        session = Conversation(
            sid,
            neg.chunk_samples,
            server.format.frame_samples,
            server.spec.max_send_backlog,
            server.spec.resume_replay_events if resumable else 0,
            text=server.served.text_decoder(),
            lifecycle=Lifecycle(self.clock),
        )
        session.key_id = key_id
        session.slot_session.prompt = neg.prompt  # prefilled into its slot when the session is placed
        session.slot_session.sampling = neg.sampling
        if not sched.admit(session) and not (server.resumes.sweep() and sched.admit(session)):
            session.lifecycle.close()
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"replica full: {sched.capacity}/{sched.capacity} sessions; retry later",
                (("retry-after-ms", "1000"),),
            )
        session.on_close = lambda: sched.leave(session)
        server.agent.attach(session, neg.tools)
        self.instruction_tokens = list(neg.instruction_tokens)
        fmt = pb.AudioFormat(sample_rate=server.format.sample_rate, channels=1, encoding=pb.PCM16_LE)
        session.ready = pb.SessionReady(
            session_id=sid,
            model=server.model_name,
            input_format=fmt,
            output_format=fmt,
            chunk_ms=neg.chunk_ms,
            frame_ms=round(server.format.frame_ms),
            chunk_samples=neg.chunk_samples,
            tools=neg.tools,
            replica=f"{server.spec.host}:{server.port}",
            resume_token=server.resumes.issue(session, key_id) if resumable else "",
            resume_grace_ms=round(server.resumes.grace_s * 1000) if resumable else 0,
            video_size=server.format.video_size,
        )
        self.ready = session.ready
        return session

    def _claim(self, start: pb.SessionStart, key_id: str) -> Conversation:
        """PARKED → ATTACHED: the parked session ``start.resume_token`` names, the events the client missed
        queued ahead of the new ones (``InputError`` naming the field when it cannot)."""
        server = self.server
        if not server.resumes.enabled:
            raise v.InputError(
                grpc.StatusCode.FAILED_PRECONDITION, "start.resume_token: this replica does not keep sessions to resume"
            )
        conv = server.resumes.claim(start.resume_token, key_id)
        seen = start.resume_events_seen
        if seen > conv.events_out:
            server.resumes.park(conv)  # still resumable with a correct count
            raise v.InputError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"start.resume_events_seen: {seen} is more than the {conv.events_out} events the session sent",
            )
        missing = conv.events_out - seen
        again = [conv.replay.pop() for _ in range(min(missing, len(conv.replay)))][::-1]
        if len(again) < missing:
            again.insert(0, self._gap_warning(missing - len(again)))
        conv.events_out = seen
        conv.outbox.extendleft(reversed(again))
        conv.backlog_slack = len(conv.outbox)
        conv.lifecycle.attach()
        assert server.scheduler is not None and conv.ready is not None
        server.scheduler.resume(conv)
        server.metrics.resumed.inc()
        server.metrics.parked_sessions.set(server.resumes.parked_count())
        conv.wake.set()
        self.ready.CopyFrom(conv.ready)
        self.ready.send_in_us = 0  # its cohort and phase are kept: the client keeps its own pace
        self.ready.resumed = True
        self.ready.resume_events_received = conv.events_in
        self.ready.resume_next_seq = conv.next_audio_seq
        return conv

    def _gap_warning(self, lost: int) -> pb.ServerEvent:
        return pb.ServerEvent(
            warning=pb.Warning(
                code="RESUME_GAP",
                message=f"{lost} server events sent before the stream dropped are no longer held "
                f"(only the last {self.server.spec.resume_replay_events} are kept) and were lost",
            )
        )

    # ----- HANDSHAKE → ATTACHED ----------------------------------------------------------------------------
    def attach(self) -> pb.ServerEvent:
        """The SessionReady to send; a new session gets its instructions queued and its phase hint."""
        session, sched = self.session, self.server.scheduler
        assert session is not None and sched is not None
        if self.resumed:
            log.info("session resumed (peer %s)", self.peer)
            return pb.ServerEvent(ready=self.ready)
        log.info("session started (peer %s)", self.peer)
        if self.instruction_tokens:
            sched.add_text(session, self.instruction_tokens)
        if self.client_us > 0:
            # the hint counts from the Ready's departure, which the client places half a network round trip
            # before the Ready's arrival (``client.first_send_us``)
            arrive = sched.steer(session, not_before=self.started + STEER_MARGIN_S)
            if arrive is not None:
                sent = self.clock()
                self.ready.send_in_us = max(1, round((arrive - sent) * 1e6))
                self.ready.start_held_us = round((sent - self.started) * 1e6)
        session.lifecycle.attach()
        return pb.ServerEvent(ready=self.ready)

    # ----- ATTACHED -----------------------------------------------------------------------------------
    def on_lost(self) -> None:
        """The reader saw this stream fail (a failed read, or a half-close followed by the RPC's end)."""
        self.lost = True
        if self.session is not None:
            self.session.wake.set()

    async def events(self) -> AsyncIterator[pb.ServerEvent]:
        """The session's server events while this stream holds it. Ends when the session finishes or closes
        (``dropped`` False) or the reader saw the stream fail (``dropped`` stays True)."""
        session = self.session
        assert session is not None
        while True:
            while session.outbox and session.closing is None and not self.lost:
                event = session.outbox.popleft()
                session.replay.append(event)  # kept (bounded) until a resume knows the client had it
                session.events_out += 1
                yield event
            if not session.outbox:
                session.backlog_slack = 0
            if self.lost:
                return  # the reader saw the stream fail: park (detach)
            if session.closing is not None or (session.finished and not session.outbox):
                break
            session.wake.clear()
            await session.wake.wait()
        self.dropped = False

    def unfinished(self, stream_done: asyncio.Event) -> None:
        """The writer stopped before the session finished (its stream was lost). A transport already over
        needs no status; one still open must never end OK with the session's input unanswered: it ends
        UNAVAILABLE (the session is parked by ``detach``, so the client resumes it)."""
        if stream_done.is_set():
            return
        log.info("stream still open after its reader reported it lost: ending it UNAVAILABLE")
        self.reader_stopped = False  # the status now: the client resumes and re-sends what was not read
        raise v.InputError(
            grpc.StatusCode.UNAVAILABLE, "stream lost by the engine before the session finished; resume the session"
        )

    def finish(self, reader: asyncio.Task[None] | None) -> None:
        """The session is over as the protocol says: OK (returns), or ``v.InputError`` with the status it
        closed with (``reader_stopped``: no one reads the client's stream any more)."""
        session = self.session
        assert session is not None
        if session.closing is None:
            log.info("session finished")
            return
        session.outbox.clear()
        self.server.metrics.errors.labels(session.closing.code.name).inc()
        log.info("session closed: %s %s", session.closing.code.name, session.closing.message)
        self.reader_stopped = reader is not None and reader.done()
        raise v.InputError(session.closing.code, session.closing.message)

    # ----- ATTACHED → PARKED | CLOSED ---------------------------------------------------------------------
    def detach(self) -> None:
        """The stream is over: park a live resumable session whose stream dropped, else close it."""
        server, session = self.server, self.session
        assert session is not None and server.scheduler is not None
        if self.dropped and server._parkable(session):
            session.lifecycle.park()
            server.resumes.park(session)
            server.scheduler.park(session)  # its cohort's steps stop waiting for its chunks
            server.metrics.parked_sessions.set(server.resumes.parked_count())
            log.info("stream dropped: session kept %.3g s for a resume", server.resumes.grace_s)
        else:
            server._end(session)
