"""The engine's gRPC server (grpc.aio): ``Duplex.Converse`` for conversations, ``Replica.GetLoad`` for the
session picker, standard health and reflection. I/O lives here; batching lives in ``scheduler``
(planner → executor → output stage)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from duplex.model.family import ServedModel, SessionSampling
from duplex.model.family_duplex import DuplexServed
from duplex.model.model import DuplexModel
from duplex.model.runtime import load_served
from duplex.model.spec import ModelSource
from duplex.v1 import duplex_pb2 as pb

from ..drain import drain_client
from ..heap import freeze_startup_heap
from ..metrics import EngineMetrics, MetricsServer
from ..realtime.endpoint import RealtimeEndpoint
from ..realtime.host import ConversationEnded
from ..resume_token import RESUMABLE_METADATA
from ..spec import EngineSpec
from . import validate as v
from .agent_link import AgentLink
from .converse import EngineStream
from .resume import ResumeRegistry
from .scheduler import Scheduler
from .session import Conversation, InputChunk

log = logging.getLogger(__name__)


SERVICE = "duplex.v1.Duplex"


def _is_eof(message: object) -> bool:
    return message is grpc.aio.EOF


MAX_PICKERS = 64
"""Session pickers whose placement numbers are remembered (the oldest is forgotten past it)."""
MAX_TEXT_QUEUE = 16384
GIL_SWITCH_S = 0.0005
HALF_CLOSE_SETTLE_S = 0.25
"""A stream half-closed without EndOfStream ends the session unless the RPC is cancelled within this long
(then its peer died and the session is kept for a resume)."""
SWEEP_INTERVAL_S = 0.1
"""How often parked sessions are checked against their resume grace (on the injected clock)."""


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


class EngineServer:
    """Rank 0 of a replica: the model, the scheduler and the gRPC server around them."""

    def __init__(
        self,
        spec: EngineSpec,
        source: ModelSource,
        model: DuplexModel | ServedModel[Any] | None = None,
        bind_port: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        http_bind_port: int | None = None,
    ) -> None:
        """``bind_port`` overrides ``spec.port`` and ``http_bind_port`` ``spec.http_port`` (for both, 0 = any
        free port: tests, ``duplex up``; without an override a ``spec.http_port`` of 0 means no Realtime
        WebSocket endpoint); ``clock``
        (monotonic seconds): the engine's one clock — the scheduler's steps, the sessions' receive times and
        lifecycles, the resume grace (tests inject one they advance)."""
        self.spec, self.source = spec, source
        self.bind_port = spec.port if bind_port is None else bind_port
        self.http_bind_port = http_bind_port if http_bind_port is not None else (spec.http_port or None)
        self.http_port = 0
        """Bound port of the Realtime WebSocket endpoint (0 = not served)."""
        self.realtime: RealtimeEndpoint | None = None
        if model is None:
            model = load_served(source, device=spec.device)
        self.served: ServedModel[Any] = DuplexServed(model) if isinstance(model, DuplexModel) else model
        self.format = self.served.format
        self.model_name = spec.served_model_name or self.format.name
        self.continues_after_input = self.format.continues_after_input
        self.session_sampling = isinstance(self.served, SessionSampling)
        self.served.frames_per_chunk(spec.chunk_ms)  # validate early: a clear error before binding a port
        self.metrics = EngineMetrics()
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.draining = False
        self._server: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self.scheduler: Scheduler | None = None
        self.agent: AgentLink | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.clock = clock
        self.placements_seen: dict[str, int] = {}
        """Per session picker, the highest placement number seen on a stream (``Replica.GetLoad`` reports it)."""
        self.resumes = ResumeRegistry(spec.resume_grace_s, clock, self._expired)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        # the step thread runs the model's Python between torch kernels; with the default 5 ms GIL switch
        # interval a chunk that arrives meanwhile can sit that long before the event loop may read it
        sys.setswitchinterval(GIL_SWITCH_S)
        self.scheduler = Scheduler(self.served, self.spec, self.spec.chunk_ms, self.metrics, loop, self.clock)
        self.scheduler.on_fatal = self._fatal
        self.agent = AgentLink(self.spec, self.metrics, self._feed_text)
        self.scheduler.output.on_model_text = self.agent.model_text
        self.scheduler.start()
        self.metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))  # read at scrape time
        self.metrics.slots_occupied.set_function(self.scheduler.placed_count)
        server = grpc.aio.server(options=server_options(self.spec.max_message_bytes))
        handler = grpc.stream_stream_rpc_method_handler(
            self.converse, request_deserializer=v.parse_event, response_serializer=pb.ServerEvent.SerializeToString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Converse": handler}),))
        get_load = grpc.unary_unary_rpc_method_handler(
            self.get_load,
            request_deserializer=pb.LoadRequest.FromString,
            response_serializer=pb.ReplicaLoad.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("duplex.v1.Replica", {"GetLoad": get_load}),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            SERVICE,
            "duplex.v1.Replica",
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        try:
            self.port = server.add_insecure_port(f"{self.spec.host}:{self.bind_port}")
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if not self.port:
            raise OSError(f"engine: cannot bind {self.spec.host}:{self.bind_port}")
        await server.start()
        self._server = server
        await self.agent.start(self.port)
        if self.http_bind_port is not None:
            self.realtime = RealtimeEndpoint(self, self.metrics.registry, self.spec.max_message_bytes)
            try:
                self.http_port = await self.realtime.start(self.spec.host, self.http_bind_port)
            except OSError:
                await self.stop(0)
                raise
        self._metrics_server = MetricsServer(self.metrics.registry, self.spec.host, self.spec.metrics_port)
        if self.resumes.enabled:
            self._tasks.add(asyncio.ensure_future(self._sweep_loop()))
        frozen = freeze_startup_heap()  # before the first session: see heap.py
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "engine serving %s on %s:%d (%d slots in %d cohorts, chunk %d ms; %d objects frozen)",
            self.model_name,
            self.spec.host,
            self.port,
            self.scheduler.capacity,
            len(self.scheduler.cohorts),
            self.spec.chunk_ms,
            frozen,
        )
        return self.port

    def _feed_text(self, conv: Conversation, text: str) -> None:
        """An agent result as the model's text input (the Moshi family: forced text on its own text stream)."""
        assert self.scheduler is not None
        self.scheduler.add_text(conv, self.served.encode_text(text))

    def _fatal(self, exc: BaseException) -> None:
        log.error("engine step thread died (%s): marking NOT_SERVING", exc)
        self._tasks.add(asyncio.ensure_future(self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)))

    async def stop(self, grace: float = 5.0) -> None:
        self.draining = True
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self.realtime is not None:
            realtime, self.realtime = self.realtime, None
            await realtime.stop()
        for conv in [e.conversation for e in self.resumes.entries.values() if e.expires_at is not None]:
            self.resumes.forget(conv)  # parked sessions end with the engine
            self._end(conv)
        if self._server is not None:
            await self._server.stop(grace)
        if self.agent is not None:
            await self.agent.close()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._metrics_server is not None:
            self._metrics_server.close()

    async def close_realtime(self) -> int:
        """Close the live Realtime WebSockets (1001, going away) ahead of a stop; how many."""
        return await self.realtime.close_sessions() if self.realtime is not None else 0

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def get_load(self, request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.ReplicaLoad:
        """``Replica.GetLoad``: what the session picker places sessions on."""
        sched = self.scheduler
        assert sched is not None
        return pb.ReplicaLoad(
            active_sessions=sched.active_count(),
            capacity=sched.capacity,
            model=self.model_name,
            chunk_ms=self.spec.chunk_ms,
            step_ms_p50=sched.step_ms_p50(),
            draining=self.draining,
            sessions_by_key=Counter(c.key_id for c in sched.conversations if c.key_id),
            placements_seen=self.placements_seen,
            http_port=self.http_port,
        )

    def saw_placement(self, value: str) -> None:
        """Note a picker's placement number (``PICKER_ID.NUMBER``; anything else is ignored)."""
        picker, _, number = value.rpartition(".")
        if not picker or not number.isdigit() or len(picker) > 64:
            return
        if picker not in self.placements_seen and len(self.placements_seen) >= MAX_PICKERS:
            self.placements_seen.pop(next(iter(self.placements_seen)))  # the oldest picker seen
        self.placements_seen[picker] = max(self.placements_seen.get(picker, 0), int(number))

    # ----- Converse ----------------------------------------------------------------------------------
    async def converse(
        self, requests: AsyncIterator[pb.ClientEvent | v.Undecodable], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerEvent]:
        """The gRPC transport of one session (``converse.EngineStream.run``): a refusal or a session closed
        with a status ends the RPC with that status, after draining what the client still writes when no one
        reads it (the status must not race the client's writes: ``serving/drain.py``)."""
        await context.send_initial_metadata(())  # the call is accepted: the client sends its SessionStart
        it = aiter(requests)
        first = await anext(it, None)
        if first is None:
            return
        stream_done = asyncio.Event()
        context.add_done_callback(lambda _: stream_done.set())
        stream = EngineStream(self, context.peer())
        try:
            async for event in stream.run(first, it, dict(context.invocation_metadata() or ()), stream_done):
                yield event
        except v.InputError as e:
            if stream.reader_stopped:
                await drain_client(context.read, _is_eof)
            await context.abort(e.code, e.message, trailing_metadata=getattr(e, "trailing", ()))

    async def open_conversation(
        self, first: pb.ClientEvent, rest: AsyncIterator[pb.ClientEvent], metadata: dict[str, str]
    ) -> AsyncGenerator[pb.ServerEvent, None]:
        """The in-process transport (the Realtime WebSocket, ``realtime.host.ConversationHost``): the same
        session path as ``converse``, the client's events as objects, no resume (the caller cannot present a
        token); a refusal or a session closed with a status raises ``ConversationEnded``."""
        stream_done = asyncio.Event()  # never set: the caller ends the stream by closing this generator
        stream = EngineStream(self)
        try:
            async for event in stream.run(first, rest, {**metadata, RESUMABLE_METADATA: "0"}, stream_done):
                yield event
        except v.InputError as e:
            raise ConversationEnded(e.code, e.message) from None

    def _parkable(self, session: Conversation) -> bool:
        """Keep a session whose stream dropped? Only a live one, when resumption is on and the engine stays."""
        return (
            bool(session.resume_handle)
            and not self.draining
            and session.closing is None
            and not session.finished
            and not session.input_ended
            and not session.left
        )

    def _end(self, session: Conversation) -> None:
        """The session is over (CLOSED): free its slot, end its agent jobs, void its token."""
        assert self.scheduler is not None and self.agent is not None
        session.lifecycle.close()
        self.scheduler.leave(session)
        self.agent.detach(session)
        self.resumes.forget(session)

    def _expired(self, session: Conversation) -> None:
        log.info("resume grace of %.3g s over: slot freed", self.resumes.grace_s, extra={"session": session.id})
        self.metrics.resume_expired.inc()
        self._end(session)
        self.metrics.parked_sessions.set(self.resumes.parked_count())

    def sweep_resumable(self) -> int:
        """Free the parked sessions past their grace now (the engine also does it on its own, and before it
        refuses a session for want of a slot); returns how many."""
        return self.resumes.sweep()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.resumes.sweep()

    async def _read(
        self,
        it: AsyncIterator[pb.ClientEvent | v.Undecodable],
        session: Conversation,
        resumed: bool,
        stream_done: asyncio.Event,
        on_lost: Callable[[], None],
    ) -> None:
        """Read one stream of the session into the scheduler. On a resumed stream, audio and video the engine
        already has (a client re-sending from what was not answered) are skipped. ``stream_done`` is set when
        the RPC is over; ``on_lost`` tells this stream's writer that the stream failed (it parks the session)."""
        assert self.scheduler is not None
        try:
            how = await self._read_events(it, session, resumed)
            if how == "closing" or (how == "half-closed" and await self._peer_died(session, stream_done, on_lost)):
                return
            session.input_ended = True
            self.scheduler.end(session)
        except v.InputError as e:
            session.close(e.code, e.message)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            on_lost()  # the writer parks the session (or frees it)
        except Exception as e:  # never let a reader bug hang the stream
            log.exception("reader failed")
            session.close(grpc.StatusCode.INTERNAL, f"engine error reading the stream: {e}")

    async def _read_events(
        self, it: AsyncIterator[pb.ClientEvent | v.Undecodable], session: Conversation, resumed: bool
    ) -> Literal["closing", "end", "half-closed"]:
        """Hand the stream's events to their handlers until the session closes (``closing``), the client sends
        EndOfStream (``end``) or the stream half-closes without it (``half-closed``). A handler returns whether
        it handed the event on (False: a resumed stream's re-sent duplicate, skipped)."""
        handlers: dict[str, Callable[[pb.ClientEvent, Conversation, bool], Awaitable[bool]]] = {
            "audio": self._read_audio,
            "text": self._read_text,
            "video": self._read_video,
            "agent": self._read_agent,
        }
        async for ev in it:
            if session.closing is not None:
                return "closing"
            kind = v.event_kind(ev)
            assert isinstance(ev, pb.ClientEvent)
            if kind == "end":
                return "end"
            handler = handlers.get(kind)
            if handler is None:
                raise v.InputError(grpc.StatusCode.FAILED_PRECONDITION, "start: the session already started")
            if await handler(ev, session, resumed):
                session.events_in += 1  # handed on: a resume need not re-send it
        return "half-closed"

    async def _read_audio(self, ev: pb.ClientEvent, session: Conversation, resumed: bool) -> bool:
        """Submit an audio chunk, waiting while the session has ``max_pending_chunks`` in flight."""
        assert self.scheduler is not None
        if resumed and ev.audio.seq < session.next_audio_seq:
            return False
        recv = self.clock()
        pcm = v.check_audio(ev.audio, session.next_audio_seq, session.chunk_samples)
        chunk = InputChunk(ev.audio.seq, pcm, ev.audio.client_time_us, recv, self.scheduler.wall_us(recv))
        while session.chunks_in_flight >= self.spec.max_pending_chunks and session.closing is None:
            session.room.clear()  # backpressure: stop reading until a step consumes a chunk
            await session.room.wait()
        session.next_audio_seq += 1
        self.scheduler.submit(session, chunk)
        return True

    async def _read_text(self, ev: pb.ClientEvent, session: Conversation, resumed: bool) -> bool:
        """Queue typed text for the model's text input (at most ``MAX_TEXT_QUEUE`` tokens waiting)."""
        assert self.scheduler is not None
        tokens = v.check_text(ev.text, self.served)
        if session.text_in_flight + len(tokens) > MAX_TEXT_QUEUE:
            raise v.InputError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"text.text: more than {MAX_TEXT_QUEUE} bytes of typed text waiting",
            )
        self.scheduler.add_text(session, tokens)
        return True

    async def _read_video(self, ev: pb.ClientEvent, session: Conversation, resumed: bool) -> bool:
        """Set the session's video frame (a resumed stream's frames up to the last one seen are skipped)."""
        assert self.scheduler is not None
        if resumed and ev.video.seq <= session.last_video_seq:
            return False
        frame = v.check_video(ev.video, session.last_video_seq, self.format.video_size)
        self.scheduler.set_video(session, frame, int(ev.video.seq))
        session.last_video_seq = int(ev.video.seq)
        return True

    async def _read_agent(self, ev: pb.ClientEvent, session: Conversation, resumed: bool) -> bool:
        """Pass an AgentRequest to the background agent."""
        assert self.agent is not None
        self.agent.request(session, v.check_agent(ev.agent))
        return True

    async def _peer_died(self, session: Conversation, stream_done: asyncio.Event, on_lost: Callable[[], None]) -> bool:
        """After a half-close without EndOfStream: did the peer die (the stream is lost, kept for a resume)?

        Such a half-close looks the same as a peer that died (a front door that went away): the RPC is
        cancelled a moment later in that case, so wait for that briefly. Only a resumable session waits.

        The wait is ``asyncio.timeout``, not ``asyncio.wait_for``: when the RPC's end and the reader's
        cancellation (the stream parked) come in the same loop iteration, Python 3.11's ``wait_for`` returns
        the finished wait and drops the cancellation, and a reader that went on past its stream's park would
        report a stream lost that is no longer its own."""
        if not session.resume_handle:
            return False
        try:
            async with asyncio.timeout(HALF_CLOSE_SETTLE_S):
                await stream_done.wait()
        except TimeoutError:
            pass
        if not stream_done.is_set():
            return False
        on_lost()
        return True
