"""One Realtime WebSocket = one conversation on the engine serving it, run in-process: the client's events go
to the engine's session path (``ConversationHost.open_conversation``) as ``pb.ClientEvent`` objects, its
server events come back as objects — the same admission, validation, slots and scheduler as a gRPC stream,
with no serialization and no second hop.

The session is an explicit lifecycle (``lifecycle.Phase``): OPEN (``session.created`` sent; ``session.update``
may still set the instructions, tools and voice of the SessionStart) → STARTING (the first event that needs the
conversation — ``input_audio_buffer.append`` or ``conversation.item.create`` — handed the SessionStart to the
engine; audio is buffered) → LIVE (SessionReady: audio is resampled from 24 kHz to the model's rate, cut into
chunks and handed over as each fills, so a client that streams its microphone keeps the live-mic schedule) →
CLOSED. Server events are translated by ``translate.Translator``.

The bridge's own work is timed per audio chunk on ``bridge_clock`` (``duplex_engine_realtime_bridge_seconds``):
ingress from the text frame that completed a chunk to its ``ClientEvent`` being taken by the engine's session
(JSON, base64, resampling, cutting), egress from a ``ModelAudio`` coming out of the session to the frames
carrying it being written (resampling, base64, JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import WSMsgType, web

from duplex.v1 import duplex_pb2 as pb

from .events import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    FunctionCallContent,
    ItemCreate,
    ItemTruncate,
    SessionUpdate,
    TextContent,
    call_result,
    decode_client_event,
)
from .host import ConversationEnded, ConversationHost
from .lifecycle import Lifecycle, Phase
from .metrics import RealtimeMetrics
from .protocol import ClientError, EventFactory, SessionSettings, new_id
from .translate import Translator
from .uplink import Uplink

log = logging.getLogger(__name__)

UPSTREAM_CHUNKS = 8
"""Events queued towards the engine; beyond it the endpoint stops reading the WebSocket (TCP pushes back on a
client sending faster than real time), as the engine's own ``max_pending_chunks`` does for gRPC."""
CLOSE_CODES = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: 1013,  # try again later
    grpc.StatusCode.UNAVAILABLE: 1013,
    grpc.StatusCode.INVALID_ARGUMENT: 1008,  # policy violation: the client sent something invalid
    grpc.StatusCode.NOT_FOUND: 1008,
    grpc.StatusCode.FAILED_PRECONDITION: 1008,
    grpc.StatusCode.UNAUTHENTICATED: 1008,
    grpc.StatusCode.OK: 1000,
}
"""WebSocket close code for a conversation that ended with this gRPC status (others: 1011, server error)."""


def close_reason(message: str) -> bytes:
    """A close frame's reason holds at most 123 bytes."""
    return message.encode()[:123]


class RealtimeSession:
    """One WebSocket's conversation. Clocks: ``clock`` (monotonic seconds: the lifecycle), ``bridge_clock``
    (monotonic seconds: the bridge timing), ``clock_us`` (the ``client_time_us`` stamped on chunks and text)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        host: ConversationHost,
        metrics: RealtimeMetrics,
        settings: SessionSettings,
        duplex_events: bool,
        metadata: dict[str, str],
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        bridge_clock: Callable[[], float] = time.perf_counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ws, self.host, self.metrics, self.settings = ws, host, metrics, settings
        self.metadata = metadata
        """Stream headers for the engine: the caller's key id and placement, as the session picker set them."""
        self.clock_us, self.bridge_clock = clock_us, bridge_clock
        self.lifecycle = Lifecycle(clock)
        self.ev = EventFactory()
        self.translator = Translator(self.ev, metrics, duplex_events)
        self.session_id = new_id("sess")
        self._send_lock = asyncio.Lock()
        self._upstream: asyncio.Queue[tuple[pb.ClientEvent, float | None]] = asyncio.Queue(UPSTREAM_CHUNKS)
        """ClientEvents towards the engine, each with the ``bridge_clock`` time its WebSocket frame arrived
        (None: not an audio chunk, or audio that waited for ``SessionReady`` — not timed)."""
        self._frame_received: float | None = None
        """``bridge_clock`` time the text frame being handled arrived."""
        self._pump: asyncio.Task[None] | None = None
        self._handover: asyncio.Task[None] | None = None
        """Hands the audio held until SessionReady to the engine (its own task: the engine takes its input while
        the pump that received SessionReady goes on reading the conversation's events)."""
        self.uplink = Uplink(clock_us)
        self._uplink_lock = asyncio.Lock()
        """Held while the uplink's chunks go upstream, so they go in ``seq`` order whoever hands them over."""
        self.input_ended = False
        """``input_audio_buffer.commit`` ended the input (a model that goes on after it: Hibiki's tail)."""
        self._handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            SessionUpdate: self._session_update,
            AudioAppend: self._audio_append,
            AudioCommit: self._audio_commit,
            AudioClear: self._audio_clear,
            ItemCreate: self._item_create,
            ItemTruncate: self._item_truncate,
        }  # ResponseCreate: the model speaks on its own

    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    def describe(self) -> dict[str, Any]:
        return self.settings.describe(self.session_id, self.host.model_name)

    # ------------------------------------------------------------------------------------------ client side
    async def run(self) -> None:
        """Serve the WebSocket until either side ends it (→ CLOSED)."""
        try:
            await self.send(self.ev("session.created", session=self.describe()))
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._frame_received = self.bridge_clock()
                    await self.on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.client_error(
                        ClientError("frame: binary frames are not events; send JSON text frames", None, "invalid_frame")
                    )
                elif msg.type == WSMsgType.ERROR:  # oversized frame (closed with 1009) or a broken frame
                    self.metrics.errors.labels("invalid_frame").inc()
                    log.info("realtime %s: %s", self.session_id, msg.data)
                    break
        finally:
            self.lifecycle.close()
            for task in (self._handover, self._pump):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def on_text(self, data: str) -> None:
        """One text frame: a client event, or an ``error`` event naming what was wrong with it."""
        try:
            event: ClientEvent = decode_client_event(data)
            handler = self._handlers.get(type(event))
            if handler is not None:
                await handler(event)
        except ClientError as e:
            await self.client_error(e, e.event_id)

    async def client_error(self, e: ClientError, event_id: str | None = None) -> None:
        self.metrics.errors.labels(e.code).inc()
        await self.send(self.ev.error(e.message, code=e.code, param=e.param, event_id=event_id))

    async def _session_update(self, event: SessionUpdate) -> None:
        self.settings.apply(event.patch, self.phase is not Phase.OPEN)
        await self.send(self.ev("session.updated", session=self.describe()))

    async def _audio_append(self, event: AudioAppend) -> None:
        self._check_input_open("input_audio_buffer.append", "audio")
        self.start()
        await self._feed(event.pcm, self._frame_received)

    def _check_input_open(self, what: str, param: str) -> None:
        if self.input_ended:
            raise ClientError(
                f"{what}: the input ended with input_audio_buffer.commit; the model is finishing its output "
                "and takes no more input",
                param,
                "input_ended",
            )

    async def _audio_commit(self, event: AudioCommit) -> None:
        """The end of the input, for a model that goes on after it (``ConversationHost.continues_after_input``:
        Hibiki translates what it heard): the last partial chunk (completed with silence) and ``EndOfStream``
        go to the engine, which feeds the model silence until its output is over; then the conversation ends
        OK. Other models take turns themselves: the commit is ignored, as ``response.create`` is."""
        if not self.host.continues_after_input or self.phase is Phase.CLOSED:
            return
        self._check_input_open("input_audio_buffer.commit", "type")
        if self.phase is Phase.OPEN:
            raise ClientError(
                "input_audio_buffer.commit: no audio was appended; the input cannot end before it started",
                "type",
                "input_audio_buffer_commit_empty",
            )
        self.input_ended = True
        async with self._uplink_lock:
            if self.uplink.is_live:  # otherwise SessionReady's hand-over ends the input (``on_server_event``)
                await self._finish_input()

    async def _finish_input(self) -> None:
        """The uplink's last chunks, then ``EndOfStream``; the translator ends the user's turn (under the lock)."""
        for event in self.uplink.finish():
            await self._upstream.put((event, None))
        await self._upstream.put((pb.ClientEvent(end=pb.EndOfStream()), None))
        await self._send_all(self.translator.end_input(self.uplink.chunks_sent))

    async def _audio_clear(self, event: AudioClear) -> None:
        self.uplink.clear()
        await self.send(self.ev("input_audio_buffer.cleared"))

    async def _item_truncate(self, event: ItemTruncate) -> None:
        truncated = {"item_id": event.item_id, "content_index": event.content_index, "audio_end_ms": event.audio_end_ms}
        await self.send(self.ev("conversation.item.truncated", **truncated))

    async def _item_create(self, event: ItemCreate) -> None:
        self._check_input_open("conversation.item.create", "item")
        content = event.content
        if isinstance(content, TextContent):
            out = pb.ClientEvent(text=pb.TextInput(text=content.text, client_time_us=self.clock_us()))
        elif isinstance(content, FunctionCallContent):
            self.translator.client_call(content.call_id, content.name)
            out = pb.ClientEvent(
                agent=pb.AgentRequest(call_id=content.call_id, tool=content.name, arguments_json=content.arguments)
            )
        else:
            text = call_result(content, self.translator.tool_of(content.call_id))
            out = pb.ClientEvent(text=pb.TextInput(text=text, client_time_us=self.clock_us()))
        self.start()
        await self._upstream.put((out, None))
        done = {**event.item, "id": event.item_id, "object": "realtime.item", "status": "completed"}
        await self.send(self.ev("conversation.item.added", previous_item_id=None, item=done))
        await self.send(self.ev("conversation.item.done", previous_item_id=None, item=done))

    # ------------------------------------------------------------------------------------------ engine side
    def start(self) -> None:
        """OPEN → STARTING (once): the SessionStart, with the settings as they are now, goes to the engine."""
        if self.phase is not Phase.OPEN:
            return
        self.lifecycle.start()
        start = pb.SessionStart(
            format=pb.AudioFormat(sample_rate=0, channels=1, encoding=pb.PCM16_LE),  # 0 = the model's rate
            instructions=self.settings.instructions,
            tools=self.settings.tools,
            voice=self.settings.voice,
            session_id=self.session_id,
        )
        if self.settings.temperature is not None and self.host.session_sampling:
            start.temperature = self.settings.temperature
        self._pump = asyncio.create_task(self._run_conversation(pb.ClientEvent(start=start)))

    async def _upstream_events(self) -> AsyncIterator[pb.ClientEvent]:
        while True:
            event, received = await self._upstream.get()
            if received is not None:
                self.metrics.bridge.labels("ingress").observe(self.bridge_clock() - received)
            yield event

    async def _feed(self, pcm: bytes, received: float | None) -> None:
        """Each chunk ``pcm`` completes goes upstream stamped with ``received`` (before LIVE it is held)."""
        async with self._uplink_lock:
            for event in self.uplink.feed(pcm):
                await self._upstream.put((event, received))

    async def _run_conversation(self, first: pb.ClientEvent) -> None:
        """STARTING → LIVE → CLOSED: the conversation on the engine, until it ends or the WebSocket does."""
        code, message = grpc.StatusCode.OK, ""
        try:
            conversation = self.host.open_conversation(first, self._upstream_events(), self.metadata)
            async with contextlib.aclosing(conversation) as events:
                async for event in events:
                    await self.on_server_event(event)
        except ConversationEnded as e:
            code, message = e.code, e.message
        except ConnectionError:  # the WebSocket went away while we wrote to it
            return
        await self._end(code, message)

    async def _end(self, code: grpc.StatusCode, message: str) -> None:
        """The conversation is over: an open response ends, a refusal or failure is an ``error`` event naming
        what was wrong, and the WebSocket closes with the status's close code (→ CLOSED)."""
        await self._send_all(self.translator.end(failed=code != grpc.StatusCode.OK))
        close = CLOSE_CODES.get(code, 1011)
        if code != grpc.StatusCode.OK:
            kind = "invalid_request_error" if close == 1008 else "server_error"
            self.metrics.errors.labels(code.name.lower()).inc()
            await self.send(self.ev.error(f"{code.name}: {message}", code=code.name.lower(), kind=kind))
        self.lifecycle.close()
        await self.ws.close(code=close, message=close_reason(message or "conversation ended"))

    async def on_server_event(self, event: pb.ServerEvent) -> None:
        """One of the conversation's server events, translated and sent; model audio is timed (egress) until
        its frames are out. SessionReady: STARTING → LIVE, and the audio buffered meanwhile goes upstream."""
        received = self.bridge_clock()
        ready = event.HasField("ready")
        if ready:
            self.lifecycle.live()
        await self._send_all(self.translator.translate(event))
        if ready:
            self._handover = asyncio.create_task(self._hand_over(event.ready))
        elif event.HasField("audio"):
            self.metrics.bridge.labels("egress").observe(self.bridge_clock() - received)

    async def _hand_over(self, ready: pb.SessionReady) -> None:
        """From SessionReady on, audio is cut into the engine's chunks: the chunks of the audio held meanwhile go
        upstream (then the end of the input, when it was committed meanwhile). Appends that come first wait for
        the lock and are held too, so the chunks go in order."""
        async with self._uplink_lock:
            for early in self.uplink.live(ready):  # waited for SessionReady: setup, not the bridge's work
                await self._upstream.put((early, None))
            if self.input_ended:  # committed before SessionReady
                with contextlib.suppress(ConnectionError):  # the WebSocket went away meanwhile
                    await self._finish_input()

    async def _send_all(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            await self.send(event)

    async def send(self, event: dict[str, Any]) -> None:
        if self.ws.closed:
            raise ConnectionResetError("WebSocket closed")
        async with self._send_lock:
            await self.ws.send_str(json.dumps(event))
