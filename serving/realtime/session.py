"""One Realtime WebSocket = one ``Converse`` session, opened through the gateway's own admission and routing
(``GatewayServer.relay``): the same validation, slots and engine as a gRPC client gets.

Client events are read in order on the WebSocket; the conversation starts with the first event that needs it
(``input_audio_buffer.append`` or ``conversation.item.create``), so ``session.update`` before it can still set
the instructions and tools of its ``SessionStart``. Audio is resampled from 24 kHz to the model's rate, cut
into chunks and sent as each chunk fills: a client that streams its microphone keeps the live-mic schedule,
and there is no turn cycle to wait for. Server events are translated as they arrive (docs/realtime.md has the
table): the model's floor decisions open and close responses, its text is the transcript, its tool calls are
function calls (announced by the engine's ``AgentEvent``, which carries the arguments it parsed: the model's text
is not parsed again here), and the agent's results are ``function_call_output`` items.

The bridge's own work is timed per audio chunk on ``bridge_clock`` (``duplex_gateway_realtime_bridge_seconds``):
ingress from the text frame that completed a chunk to its ``ClientEvent`` being handed to the relay (JSON,
base64, resampling, cutting, protobuf), egress from a ``ModelAudio`` coming out of the relay to the frames
carrying it being written (protobuf, resampling, base64, JSON). What follows the hand-over, and what precedes
the relay's output, is the gateway's relay, which gRPC clients pass through as well.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import WSMsgType, web

from duplex.v1 import duplex_pb2 as pb

from .audio import WIRE_RATE, ChunkCutter, StreamResampler
from .events import (
    AudioAppend,
    AudioClear,
    FunctionCallContent,
    ItemCreate,
    ItemTruncate,
    SessionUpdate,
    TextContent,
    call_result,
    decode_client_event,
)
from .metrics import RealtimeMetrics
from .protocol import ClientError, EventFactory, SessionSettings, new_id

if TYPE_CHECKING:
    from ..gateway.server import GatewayServer

log = logging.getLogger(__name__)

UPSTREAM_CHUNKS = 8
"""Chunks queued towards the engine; beyond it the endpoint stops reading the WebSocket (TCP pushes back on a
client sending faster than real time), as the engine's own ``max_pending_chunks`` does for gRPC."""
MAX_EARLY_AUDIO_S = 10
"""Audio a client may send before the engine has answered ``SessionReady`` (normally milliseconds)."""

_CLOSE_CODES = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: 1013,  # try again later
    grpc.StatusCode.UNAVAILABLE: 1013,
    grpc.StatusCode.INVALID_ARGUMENT: 1008,  # policy violation: the client sent something invalid
    grpc.StatusCode.NOT_FOUND: 1008,
    grpc.StatusCode.FAILED_PRECONDITION: 1008,
    grpc.StatusCode.UNAUTHENTICATED: 1008,
    grpc.StatusCode.OK: 1000,
}
"""WebSocket close code for a conversation that ended with this gRPC status (others: 1011, server error)."""


@dataclass
class Response:
    """An open response: a model turn, a backchannel, or a tool call made while the model holds no floor."""

    id: str
    kind: str
    """``turn``, ``backchannel`` or ``call`` (reported in ``metadata.duplex_kind``)."""
    message_id: str | None
    """The assistant audio message item (None for a ``call`` response)."""
    items: list[dict[str, Any]] = field(default_factory=list)
    transcript: str = ""
    audio_bytes: int = 0
    """Wire audio (24 kHz PCM16) sent in this response."""


def _close_reason(message: str) -> bytes:
    """A close frame's reason holds at most 123 bytes."""
    return message.encode()[:123]


class RealtimeSession:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        gateway: GatewayServer,
        metrics: RealtimeMetrics,
        settings: SessionSettings,
        model: str,
        duplex_events: bool,
        clock_us: Callable[[], int],
        key_id: str = "",
        bridge_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.key_id = key_id
        """The caller's API key id: the session counts against its quotas (gateway.key_*)."""
        self.bridge_clock = bridge_clock
        """Monotonic seconds for the bridge timing (tests inject one); read for nothing else."""
        self.ws, self.gateway, self.metrics = ws, gateway, metrics
        self.settings, self.model, self.duplex_events = settings, model, duplex_events
        self.clock_us = clock_us
        self.ev = EventFactory()
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self._send_lock = asyncio.Lock()
        self._upstream: asyncio.Queue[tuple[bytes, float | None] | None] = asyncio.Queue(UPSTREAM_CHUNKS)
        """Serialized ClientEvents towards the relay, each with the ``bridge_clock`` time its WebSocket frame
        arrived (None: not an audio chunk, or audio that waited for ``SessionReady`` — not timed)."""
        self._frame_received: float | None = None
        """``bridge_clock`` time the text frame being handled arrived."""
        self._pump: asyncio.Task[None] | None = None
        self._early = bytearray()
        self._in: StreamResampler | None = None
        self._out: StreamResampler | None = None
        self._cutter: ChunkCutter | None = None
        self._seq = 0
        self.model_rate = 0
        self._frame_samples = 0
        self.response: Response | None = None
        self._user_item: str | None = None
        self._tools_of_calls: dict[str, str] = {}
        """call id → tool, for the calls of this session (the client's and the model's)."""
        self._client_calls: set[str] = set()
        """Calls the client made (``function_call`` items it created); every other call is the model's."""

    @property
    def started(self) -> bool:
        return self._pump is not None

    # ------------------------------------------------------------------------------------------ client side
    async def run(self) -> None:
        """Serve the WebSocket until either side ends it."""
        await self.send(self.ev("session.created", session=self.describe()))
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._frame_received = self.bridge_clock()
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.client_error(
                        ClientError("frame: binary frames are not events; send JSON text frames", None, "invalid_frame")
                    )
                elif msg.type == WSMsgType.ERROR:  # oversized frame (closed with 1009) or a broken frame
                    self.metrics.errors.labels("invalid_frame").inc()
                    log.info("realtime %s: %s", self.session_id, msg.data)
                    break
        finally:
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump

    def describe(self) -> dict[str, Any]:
        return self.settings.describe(self.session_id, self.model)

    async def _on_text(self, data: str) -> None:
        try:
            event = decode_client_event(data)
            if isinstance(event, SessionUpdate):
                self.settings.apply(event.patch, self.started)
                await self.send(self.ev("session.updated", session=self.describe()))
            elif isinstance(event, AudioAppend):
                self._start()
                await self._feed(event.pcm, self._frame_received)
            elif isinstance(event, AudioClear):
                self._early.clear()
                if self._cutter is not None:
                    self._cutter.clear()
                await self.send(self.ev("input_audio_buffer.cleared"))
            elif isinstance(event, ItemCreate):
                await self._item_create(event)
            elif isinstance(event, ItemTruncate):
                await self.send(
                    self.ev(
                        "conversation.item.truncated",
                        item_id=event.item_id,
                        content_index=event.content_index,
                        audio_end_ms=event.audio_end_ms,
                    )
                )
            # AudioCommit, ResponseCreate: the model takes turns and speaks on its own
        except ClientError as e:
            await self.client_error(e, e.event_id)

    async def client_error(self, e: ClientError, event_id: str | None = None) -> None:
        self.metrics.errors.labels(e.code).inc()
        await self.send(self.ev.error(e.message, code=e.code, param=e.param, event_id=event_id))

    async def _item_create(self, event: ItemCreate) -> None:
        content = event.content
        if isinstance(content, TextContent):
            out = pb.ClientEvent(text=pb.TextInput(text=content.text, client_time_us=self.clock_us()))
        elif isinstance(content, FunctionCallContent):
            self._tools_of_calls[content.call_id] = content.name
            self._client_calls.add(content.call_id)
            out = pb.ClientEvent(
                agent=pb.AgentRequest(call_id=content.call_id, tool=content.name, arguments_json=content.arguments)
            )
        else:
            text = call_result(content, self._tools_of_calls.get(content.call_id, "client"))
            out = pb.ClientEvent(text=pb.TextInput(text=text, client_time_us=self.clock_us()))
        self._start()
        await self._upstream.put((out.SerializeToString(), None))
        done = {**event.item, "id": event.item_id, "object": "realtime.item", "status": "completed"}
        await self.send(self.ev("conversation.item.added", previous_item_id=None, item=done))
        await self.send(self.ev("conversation.item.done", previous_item_id=None, item=done))

    # ------------------------------------------------------------------------------------------ engine side
    def _start(self) -> None:
        """Open the conversation (once): the SessionStart carries the settings as they are now."""
        if self._pump is not None:
            return
        start = pb.SessionStart(
            format=pb.AudioFormat(sample_rate=0, channels=1, encoding=pb.PCM16_LE),  # 0 = the model's rate
            instructions=self.settings.instructions,
            tools=self.settings.tools,
            voice=self.settings.voice,
            session_id=self.session_id,
        )
        self._pump = asyncio.create_task(self._run_conversation(pb.ClientEvent(start=start).SerializeToString()))

    async def _upstream_events(self) -> AsyncIterator[bytes]:
        while (item := await self._upstream.get()) is not None:
            raw, received = item
            if received is not None:
                self.metrics.bridge.labels("ingress").observe(self.bridge_clock() - received)
            yield raw

    async def _feed(self, pcm: bytes, received: float | None) -> None:
        """Resample and cut ``pcm``; each chunk it completes goes upstream stamped with ``received``."""
        if self._in is None or self._cutter is None:
            if len(self._early) + len(pcm) > MAX_EARLY_AUDIO_S * WIRE_RATE * 2:
                raise ClientError(
                    f"audio: more than {MAX_EARLY_AUDIO_S} s sent before the session was ready", "audio", "too_early"
                )
            self._early += pcm
            return
        for chunk in self._cutter.feed(self._in.feed(pcm)):
            ev = pb.ClientEvent(audio=pb.AudioChunk(seq=self._seq, pcm=chunk, client_time_us=self.clock_us()))
            self._seq += 1
            await self._upstream.put((ev.SerializeToString(), received))

    async def _run_conversation(self, first: bytes) -> None:
        from ..gateway.server import Refused

        code, message = grpc.StatusCode.OK, ""
        try:
            async with contextlib.aclosing(
                self.gateway.relay(first, self._upstream_events(), self.key_id, resumable=False)
            ) as events:
                async for raw in events:
                    await self.on_server_bytes(raw)
        except Refused as e:
            code, message = e.code, e.message
        except grpc.aio.AioRpcError as e:
            code, message = e.code(), e.details() or ""
        except ConnectionError:  # the WebSocket went away while we wrote to it
            return
        if self.response is not None:
            await self._close_response("incomplete" if code == grpc.StatusCode.OK else "failed")
        close = _CLOSE_CODES.get(code, 1011)
        if code != grpc.StatusCode.OK:
            kind = "invalid_request_error" if close == 1008 else "server_error"
            self.metrics.errors.labels(code.name.lower()).inc()
            await self.send(self.ev.error(f"{code.name}: {message}", code=code.name.lower(), kind=kind))
        await self.ws.close(code=close, message=_close_reason(message or "conversation ended"))

    async def on_server_bytes(self, raw: bytes) -> None:
        """One serialized server event from the relay; model audio is timed (egress) until its frames are out."""
        received = self.bridge_clock()
        ev = pb.ServerEvent.FromString(raw)
        await self.on_server_event(ev)
        if ev.HasField("audio"):
            self.metrics.bridge.labels("egress").observe(self.bridge_clock() - received)

    async def on_server_event(self, ev: pb.ServerEvent) -> None:
        """Translate one of the conversation's server events into Realtime events."""
        kind = ev.WhichOneof("event")
        if kind == "ready":
            await self._on_ready(ev.ready)
        elif kind == "audio":
            await self._on_audio(ev.audio)
        elif kind == "text":
            await self._on_text_delta(ev.text)
        elif kind == "turn":
            await self._on_turn(ev.turn)
        elif kind == "agent":
            await self._on_agent(ev.agent)
        elif kind == "warning" and self.duplex_events:
            w = ev.warning
            await self.send(self.ev("duplex.warning", code=w.code, message=w.message, seq=w.seq))
        elif kind == "error":
            self.metrics.errors.labels("server_error").inc()
            await self.send(self.ev.error(ev.error.message, code=str(ev.error.code), kind="server_error"))

    async def _on_ready(self, ready: pb.SessionReady) -> None:
        self.model_rate = ready.input_format.sample_rate or 16000
        self._frame_samples = ready.frame_ms * self.model_rate // 1000
        self._in = StreamResampler(WIRE_RATE, self.model_rate)
        self._out = StreamResampler(ready.output_format.sample_rate or self.model_rate, WIRE_RATE)
        self._cutter = ChunkCutter(2 * ready.chunk_samples)
        if self.duplex_events:
            await self.send(
                self.ev(
                    "duplex.session.ready",
                    engine_session_id=ready.session_id,
                    model=ready.model,
                    chunk_ms=ready.chunk_ms,
                    model_sample_rate=self.model_rate,
                    tools=list(ready.tools),
                    replica=ready.replica,
                )
            )
        await self._start_user_turn(0)  # the user holds the floor first
        early, self._early = bytes(self._early), bytearray()
        await self._feed(early, None)  # waited for SessionReady: session setup, not the bridge's work

    def _ms(self, model_sample: int) -> int:
        return model_sample * 1000 // self.model_rate if self.model_rate else 0

    async def _start_user_turn(self, at_sample: int) -> None:
        self._user_item = new_id("item")
        await self.send(
            self.ev("input_audio_buffer.speech_started", audio_start_ms=self._ms(at_sample), item_id=self._user_item)
        )

    async def _end_user_turn(self, at_sample: int) -> None:
        item, self._user_item = self._user_item, None
        if item is None:
            return
        await self.send(self.ev("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(at_sample), item_id=item))
        await self.send(self.ev("input_audio_buffer.committed", item_id=item, previous_item_id=None))

    async def _on_audio(self, audio: pb.ModelAudio) -> None:
        assert self._out is not None
        wire = self._out.feed(audio.pcm or bytes(2 * audio.samples))  # silent chunks keep the filter's state
        controls = list(audio.control)
        if self.duplex_events:
            t = audio.timing
            await self.send(
                self.ev(
                    "duplex.chunk",
                    seq=audio.seq,
                    audio_ms=self._ms(audio.output_sample),
                    controls=controls,
                    compute_ms=round(t.compute_ms, 3),
                    queue_wait_ms=round(t.queue_wait_ms, 3),
                    step_start_us=t.step_start_us,
                    late=t.late,
                    substituted=t.substituted,
                )
            )
        speak = next((f for f, c in enumerate(controls) if c == pb.FLOOR_SPEAK), None)
        voiced = speak is not None or pb.FLOOR_BACKCHANNEL in controls
        if speak is not None and (self.response is None or self.response.kind == "backchannel"):
            # this chunk's MODEL_TURN_START event follows its audio: the turn starts here
            await self._end_user_turn(audio.output_sample + speak * self._frame_samples)
            if self.response is None:
                await self._open_response("turn")
            else:
                self.response.kind = "turn"
        elif voiced and self.response is None:
            await self._open_response("backchannel")
        r = self.response
        if r is None or r.message_id is None:
            return
        if wire:
            r.audio_bytes += len(wire)
            await self.send(
                self.ev(
                    "response.output_audio.delta",
                    response_id=r.id,
                    item_id=r.message_id,
                    output_index=0,
                    content_index=0,
                    delta=base64.b64encode(wire).decode(),
                )
            )
        if r.kind == "backchannel" and not voiced:
            await self._close_response("completed")

    async def _on_text_delta(self, text: pb.TextDelta) -> None:
        r = self.response
        if text.text and r is not None and r.message_id is not None:
            r.transcript += text.text
            await self.send(
                self.ev(
                    "response.output_audio_transcript.delta",
                    response_id=r.id,
                    item_id=r.message_id,
                    output_index=0,
                    content_index=0,
                    delta=text.text,
                )
            )

    async def _function_call(self, call_id: str, name: str, arguments: str) -> None:
        """A tool call the model made: a function_call item (the engine already gave it to the agent, or refused
        it: its FAILED output follows)."""
        standalone = self.response is None
        r = self.response if self.response is not None else await self._open_response("call")
        item = {
            "id": new_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        index = len(r.items)
        r.items.append(item)
        common = {"response_id": r.id, "item_id": item["id"], "output_index": index}
        await self.send(self.ev("response.output_item.added", response_id=r.id, output_index=index, item=item))
        await self.send(self.ev("response.function_call_arguments.delta", call_id=call_id, delta=arguments, **common))
        await self.send(
            self.ev("response.function_call_arguments.done", call_id=call_id, name=name, arguments=arguments, **common)
        )
        item.update(arguments=arguments, status="completed")
        await self.send(self.ev("response.output_item.done", response_id=r.id, output_index=index, item=item))
        if standalone:
            await self._close_response("completed")

    async def _on_turn(self, turn: pb.TurnEvent) -> None:
        if self.duplex_events:
            await self.send(
                self.ev(
                    "duplex.turn",
                    turn=pb.TurnEventType.Name(turn.type).lower(),
                    seq=turn.seq,
                    audio_ms=self._ms(turn.output_sample),
                    truncated_at_ms=self._ms(turn.truncated_at_sample),
                )
            )
        if turn.type == pb.MODEL_TURN_START:
            await self._end_user_turn(turn.output_sample)
            if self.response is None:
                await self._open_response("turn")
            else:
                self.response.kind = "turn"
        elif turn.type == pb.MODEL_TURN_END:
            if self.response is not None:
                await self._close_response("completed")
            if self._user_item is None:
                await self._start_user_turn(turn.output_sample)
        elif turn.type == pb.USER_BARGE_IN:
            r = self.response
            if r is not None:
                if r.message_id is not None:
                    await self.send(
                        self.ev(
                            "conversation.item.truncated",
                            item_id=r.message_id,
                            content_index=0,
                            audio_end_ms=self._ms(turn.truncated_at_sample),
                        )
                    )
                await self._close_response("cancelled", "turn_detected")
            if self._user_item is None:
                await self._start_user_turn(turn.output_sample)

    async def _on_agent(self, agent: pb.AgentEvent) -> None:
        state = pb.AgentState.Name(agent.state)
        if self.duplex_events:
            await self.send(
                self.ev("duplex.agent", call_id=agent.job_id, tool=agent.tool, state=state, detail=agent.detail)
            )
        if agent.arguments_json and agent.job_id not in self._client_calls:
            # the first event of a call the model made carries the arguments the engine parsed from its text
            self._tools_of_calls[agent.job_id] = agent.tool
            await self._function_call(agent.job_id, agent.tool, agent.arguments_json)
        if agent.state not in (pb.DONE, pb.FAILED):
            return
        output = agent.detail if agent.state == pb.DONE else json.dumps({"error": agent.detail})
        item = {
            "id": new_id("item"),
            "object": "realtime.item",
            "type": "function_call_output",
            "call_id": agent.job_id,
            "output": output,
            "status": "completed",
        }
        await self.send(self.ev("conversation.item.added", previous_item_id=None, item=item))
        await self.send(self.ev("conversation.item.done", previous_item_id=None, item=item))

    async def _open_response(self, kind: str) -> Response:
        r = Response(new_id("resp"), kind, None if kind == "call" else new_id("item"))
        self.response = r
        await self.send(self.ev("response.created", response=self._response_object(r, "in_progress")))
        if r.message_id is not None:
            item = self._message_item(r, "in_progress")
            r.items.append(item)
            await self.send(self.ev("response.output_item.added", response_id=r.id, output_index=0, item=item))
            await self.send(
                self.ev(
                    "response.content_part.added",
                    response_id=r.id,
                    item_id=r.message_id,
                    output_index=0,
                    content_index=0,
                    part={"type": "audio", "transcript": ""},
                )
            )
        return r

    async def _close_response(self, status: str, reason: str | None = None) -> None:
        r, self.response = self.response, None
        if r is None:
            return
        if r.message_id is not None:
            ids = {"response_id": r.id, "item_id": r.message_id, "output_index": 0, "content_index": 0}
            await self.send(self.ev("response.output_audio.done", **ids))
            await self.send(self.ev("response.output_audio_transcript.done", transcript=r.transcript, **ids))
            part = {"type": "audio", "transcript": r.transcript}
            await self.send(self.ev("response.content_part.done", part=part, **ids))
            item = self._message_item(r, "completed" if status == "completed" else "incomplete")
            r.items[0] = item
            await self.send(self.ev("response.output_item.done", response_id=r.id, output_index=0, item=item))
        self.metrics.responses.labels(status).inc()
        await self.send(self.ev("response.done", response=self._response_object(r, status, reason)))

    def _message_item(self, r: Response, status: str) -> dict[str, Any]:
        content = [{"type": "output_audio", "transcript": r.transcript}] if status != "in_progress" else []
        return {
            "id": r.message_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }

    def _response_object(self, r: Response, status: str, reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "output": r.items if status != "in_progress" else [],
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}}},
            "metadata": {"duplex_kind": r.kind, "audio_ms": str(r.audio_bytes * 1000 // (2 * WIRE_RATE))},
        }
        if status != "in_progress":
            out["status_details"] = {"type": status, "reason": reason}
        return out

    async def send(self, event: dict[str, Any]) -> None:
        if self.ws.closed:
            raise ConnectionResetError("WebSocket closed")
        async with self._send_lock:
            await self.ws.send_str(json.dumps(event))
