"""The translation of one conversation's server events (``pb.ServerEvent``) into Realtime server events
(docs/realtime.md has the table). Pure: no socket, no clock; each call returns the events to send, in order.

The model's floor decisions open and close responses, its text is the transcript, its tool calls are function
calls (announced by the engine's ``AgentEvent``, which carries the arguments it parsed: the model's text is not
parsed again here), and the agent's results are ``function_call_output`` items. The user holds the floor first:
a user turn (``input_audio_buffer.speech_started``) opens with ``SessionReady`` and after each model turn.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duplex.v1 import duplex_pb2 as pb

from .audio import WIRE_RATE, StreamResampler
from .metrics import RealtimeMetrics
from .protocol import EventFactory, new_id

Event = dict[str, Any]


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


class Translator:
    """Server events → Realtime events for one conversation."""

    def __init__(self, ev: EventFactory, metrics: RealtimeMetrics, duplex_events: bool) -> None:
        self.ev, self.metrics, self.duplex_events = ev, metrics, duplex_events
        self.conversation_id = new_id("conv")
        self.model_rate = 0
        self.frame_samples = 0
        self.chunk_samples = 0
        self.input_ended = False
        """The client ended its input (``end_input``): one response carries the rest of the model's output."""
        self.response: Response | None = None
        self.user_item: str | None = None
        self.tools_of_calls: dict[str, str] = {}
        """call id → tool, for the calls of this session (the client's and the model's)."""
        self.client_calls: set[str] = set()
        """Calls the client made (``function_call`` items it created); every other call is the model's."""
        self._out_audio: StreamResampler | None = None
        self._events: list[Event] = []
        self._handlers: dict[str, Callable[[Any], None]] = {
            "ready": self._ready,
            "audio": self._audio,
            "text": self._text,
            "turn": self._turn,
            "agent": self._agent,
            "warning": self._warning,
            "error": self._error,
        }

    def _emit(self, kind: str, **fields: Any) -> None:
        self._events.append(self.ev(kind, **fields))

    def _take(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    # ----------------------------------------------------------------------------------------- public
    def client_call(self, call_id: str, tool: str) -> None:
        """The client made a call (a ``function_call`` item): it is not announced back to it."""
        self.tools_of_calls[call_id] = tool
        self.client_calls.add(call_id)

    def tool_of(self, call_id: str) -> str:
        """The tool a call of this session was to (``client`` for a call id it does not know)."""
        return self.tools_of_calls.get(call_id, "client")

    def translate(self, event: pb.ServerEvent) -> list[Event]:
        """The Realtime events one server event becomes."""
        kind = event.WhichOneof("event")
        handler = self._handlers.get(kind or "")
        if handler is not None:
            handler(getattr(event, kind or ""))
        return self._take()

    def end_input(self, chunks: int) -> list[Event]:
        """The client's input ended after ``chunks`` chunks (``input_audio_buffer.commit`` to a model that goes on
        after its input): the user's turn ends there (``input_audio_buffer.committed``), and the rest of the
        model's output — its tail — is one response, open until the conversation ends."""
        self.input_ended = True
        at_sample = chunks * self.chunk_samples
        if self.user_item is not None:
            self._emit("input_audio_buffer.speech_stopped", audio_end_ms=self.ms(at_sample), item_id=self.user_item)
        # during the model's turn no user item is open: the audio since it started is a new one
        item, self.user_item = self.user_item or new_id("item"), None
        self._emit("input_audio_buffer.committed", item_id=item, previous_item_id=None)
        self._model_turn()
        return self._take()

    def end(self, failed: bool) -> list[Event]:
        """The conversation ended: an open response ends ``incomplete`` (or ``failed``); after the end of the
        input (the model's tail ran to its end) ``completed``."""
        if self.response is not None:
            self._close_response("failed" if failed else "completed" if self.input_ended else "incomplete")
        return self._take()

    def ms(self, model_sample: int) -> int:
        return model_sample * 1000 // self.model_rate if self.model_rate else 0

    # ---------------------------------------------------------------------------------------- handlers
    def _ready(self, ready: pb.SessionReady) -> None:
        self.model_rate = ready.input_format.sample_rate or 16000
        self.frame_samples = ready.frame_ms * self.model_rate // 1000
        self.chunk_samples = ready.chunk_samples
        self._out_audio = StreamResampler(ready.output_format.sample_rate or self.model_rate, WIRE_RATE)
        if self.duplex_events:
            self._emit(
                "duplex.session.ready",
                engine_session_id=ready.session_id,
                model=ready.model,
                chunk_ms=ready.chunk_ms,
                model_sample_rate=self.model_rate,
                tools=list(ready.tools),
                replica=ready.replica,
            )
        self._start_user_turn(0)  # the user holds the floor first

    def _warning(self, w: pb.Warning) -> None:
        if self.duplex_events:
            self._emit("duplex.warning", code=w.code, message=w.message, seq=w.seq)

    def _error(self, error: pb.Error) -> None:
        self.metrics.errors.labels("server_error").inc()
        self._events.append(self.ev.error(error.message, code=str(error.code), kind="server_error"))

    def _start_user_turn(self, at_sample: int) -> None:
        self.user_item = new_id("item")
        self._emit("input_audio_buffer.speech_started", audio_start_ms=self.ms(at_sample), item_id=self.user_item)

    def _end_user_turn(self, at_sample: int) -> None:
        item, self.user_item = self.user_item, None
        if item is None:
            return
        self._emit("input_audio_buffer.speech_stopped", audio_end_ms=self.ms(at_sample), item_id=item)
        self._emit("input_audio_buffer.committed", item_id=item, previous_item_id=None)

    def _chunk_event(self, audio: pb.ModelAudio) -> None:
        t = audio.timing
        self._emit(
            "duplex.chunk",
            seq=audio.seq,
            audio_ms=self.ms(audio.output_sample),
            controls=list(audio.control),
            compute_ms=round(t.compute_ms, 3),
            queue_wait_ms=round(t.queue_wait_ms, 3),
            step_start_us=t.step_start_us,
            late=t.late,
            substituted=t.substituted,
        )

    def _audio(self, audio: pb.ModelAudio) -> None:
        assert self._out_audio is not None, "ModelAudio before SessionReady"
        wire = self._out_audio.feed(audio.pcm or bytes(2 * audio.samples))  # silent chunks keep the filter's state
        controls = list(audio.control)
        if self.duplex_events:
            self._chunk_event(audio)
        speak = next((f for f, c in enumerate(controls) if c == pb.FLOOR_SPEAK), None)
        voiced = speak is not None or pb.FLOOR_BACKCHANNEL in controls
        if speak is not None and (self.response is None or self.response.kind == "backchannel"):
            # this chunk's MODEL_TURN_START event follows its audio: the turn starts here
            self._end_user_turn(audio.output_sample + speak * self.frame_samples)
            self._model_turn()
        elif voiced and self.response is None:
            self._open_response("backchannel")
        r = self.response
        if r is None or r.message_id is None:
            return
        if wire:
            r.audio_bytes += len(wire)
            self._emit(
                "response.output_audio.delta",
                response_id=r.id,
                item_id=r.message_id,
                output_index=0,
                content_index=0,
                delta=base64.b64encode(wire).decode(),
            )
        if r.kind == "backchannel" and not voiced:
            self._close_response("completed")

    def _model_turn(self) -> None:
        """The model takes the turn: a new response, or the backchannel it was making becomes the turn."""
        if self.response is None:
            self._open_response("turn")
        else:
            self.response.kind = "turn"

    def _text(self, text: pb.TextDelta) -> None:
        r = self.response
        if text.text and r is not None and r.message_id is not None:
            r.transcript += text.text
            self._emit(
                "response.output_audio_transcript.delta",
                response_id=r.id,
                item_id=r.message_id,
                output_index=0,
                content_index=0,
                delta=text.text,
            )

    def _turn(self, turn: pb.TurnEvent) -> None:
        if self.duplex_events:
            self._emit(
                "duplex.turn",
                turn=pb.TurnEventType.Name(turn.type).lower(),
                seq=turn.seq,
                audio_ms=self.ms(turn.output_sample),
                truncated_at_ms=self.ms(turn.truncated_at_sample),
            )
        if self.input_ended:
            return  # the tail's response stays open until the conversation ends
        if turn.type == pb.MODEL_TURN_START:
            self._end_user_turn(turn.output_sample)
            self._model_turn()
            return
        if turn.type == pb.USER_BARGE_IN:
            self._barge_in(turn)
        elif turn.type == pb.MODEL_TURN_END and self.response is not None:
            self._close_response("completed")
        if turn.type in (pb.MODEL_TURN_END, pb.USER_BARGE_IN) and self.user_item is None:
            self._start_user_turn(turn.output_sample)

    def _barge_in(self, turn: pb.TurnEvent) -> None:
        """The user took the floor: the model's message is cut where the client had played it, and its
        response cancelled."""
        r = self.response
        if r is None:
            return
        if r.message_id is not None:
            self._emit(
                "conversation.item.truncated",
                item_id=r.message_id,
                content_index=0,
                audio_end_ms=self.ms(turn.truncated_at_sample),
            )
        self._close_response("cancelled", "turn_detected")

    def _agent(self, agent: pb.AgentEvent) -> None:
        state = pb.AgentState.Name(agent.state)
        if self.duplex_events:
            self._emit("duplex.agent", call_id=agent.job_id, tool=agent.tool, state=state, detail=agent.detail)
        if agent.arguments_json and agent.job_id not in self.client_calls:
            # the first event of a call the model made carries the arguments the engine parsed from its text
            self.tools_of_calls[agent.job_id] = agent.tool
            self._function_call(agent.job_id, agent.tool, agent.arguments_json)
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
        self._emit("conversation.item.added", previous_item_id=None, item=item)
        self._emit("conversation.item.done", previous_item_id=None, item=item)

    def _function_call(self, call_id: str, name: str, arguments: str) -> None:
        """A tool call the model made: a function_call item (the engine already gave it to the agent, or
        refused it: its FAILED output follows)."""
        standalone = self.response is None
        r = self.response if self.response is not None else self._open_response("call")
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
        self._emit("response.output_item.added", response_id=r.id, output_index=index, item=item)
        self._emit("response.function_call_arguments.delta", call_id=call_id, delta=arguments, **common)
        self._emit("response.function_call_arguments.done", call_id=call_id, name=name, arguments=arguments, **common)
        item.update(arguments=arguments, status="completed")
        self._emit("response.output_item.done", response_id=r.id, output_index=index, item=item)
        if standalone:
            self._close_response("completed")

    # --------------------------------------------------------------------------------------- responses
    def _open_response(self, kind: str) -> Response:
        r = Response(new_id("resp"), kind, None if kind == "call" else new_id("item"))
        self.response = r
        self._emit("response.created", response=self._response_object(r, "in_progress"))
        if r.message_id is not None:
            item = self._message_item(r, "in_progress")
            r.items.append(item)
            self._emit("response.output_item.added", response_id=r.id, output_index=0, item=item)
            self._emit(
                "response.content_part.added",
                response_id=r.id,
                item_id=r.message_id,
                output_index=0,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            )
        return r

    def _close_response(self, status: str, reason: str | None = None) -> None:
        r, self.response = self.response, None
        if r is None:
            return
        if r.message_id is not None:
            ids = {"response_id": r.id, "item_id": r.message_id, "output_index": 0, "content_index": 0}
            self._emit("response.output_audio.done", **ids)
            self._emit("response.output_audio_transcript.done", transcript=r.transcript, **ids)
            self._emit("response.content_part.done", part={"type": "audio", "transcript": r.transcript}, **ids)
            item = self._message_item(r, "completed" if status == "completed" else "incomplete")
            r.items[0] = item
            self._emit("response.output_item.done", response_id=r.id, output_index=0, item=item)
        self.metrics.responses.labels(status).inc()
        self._emit("response.done", response=self._response_object(r, status, reason))

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
