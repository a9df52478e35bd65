"""Client events of the Realtime endpoint, decoded from a WebSocket text frame into typed values.

``decode_client_event`` is the endpoint's one decoder: it returns one of the event types below or raises
``ClientError`` whose message starts with the field it is about — never another exception, whatever the
frame holds (tests/fuzz/test_realtime_events.py and ``bench/fuzz_wire.py`` check it on arbitrary input). It
checks everything that does not depend on the session's state, including the limits the engine would end the
whole conversation for (a Realtime client gets an ``error`` event and keeps its session instead). Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from ..agent.toolcall import result_text
from .protocol import ClientError, SessionPatch, check_session, new_id, show

MAX_TEXT_BYTES = 4096
"""As the engine's ``MAX_TEXT_BYTES``: the largest ``TextInput`` (a longer one ends the conversation there)."""
MAX_CALL_ID_CHARS = 256
"""As the engine's ``MAX_CALL_ID_CHARS`` for ``AgentRequest.call_id``."""
MODEL_CALL_ID = re.compile(r"m[0-9]+")
"""Call ids the engine keeps for the model's own tool calls (``m1``, ``m2``, ...)."""


@dataclass(frozen=True)
class SessionUpdate:
    """``session.update``: a checked change of the settings (applied against the session's state)."""

    patch: SessionPatch
    """The fields the event sets."""
    event_id: str | None = None
    """The client's ``event_id`` (echoed in an ``error`` about it)."""


@dataclass(frozen=True)
class AudioAppend:
    """``input_audio_buffer.append``: microphone audio."""

    pcm: bytes
    """PCM16 little-endian mono at 24 kHz, an even number of bytes."""
    event_id: str | None = None
    """The client's ``event_id``."""


@dataclass(frozen=True)
class AudioCommit:
    """``input_audio_buffer.commit``: the end of the input for a model that goes on after it (Hibiki), else ignored
    (the model takes turns itself)."""

    event_id: str | None = None
    """The client's ``event_id``."""


@dataclass(frozen=True)
class AudioClear:
    """``input_audio_buffer.clear``: drop audio not yet cut into a chunk."""

    event_id: str | None = None
    """The client's ``event_id``."""


@dataclass(frozen=True)
class ResponseCreate:
    """``response.create``: accepted and ignored (the model speaks on its own)."""

    event_id: str | None = None
    """The client's ``event_id``."""


@dataclass(frozen=True)
class TextContent:
    """A ``message`` item: typed user (or system) text for the model."""

    text: str
    """The ``input_text`` parts joined by newlines (at most ``MAX_TEXT_BYTES`` of UTF-8)."""


@dataclass(frozen=True)
class FunctionCallContent:
    """A ``function_call`` item: a tool call run on the background agent."""

    call_id: str
    """The client's id for the call (not one of the model's ``m1``, ``m2``, ...)."""
    name: str
    """The tool."""
    arguments: str
    """Its arguments, a JSON object as a string (checked by the engine; a bad one fails only this call)."""


@dataclass(frozen=True)
class FunctionCallOutputContent:
    """A ``function_call_output`` item: a call's result, fed to the model as text."""

    call_id: str
    """The call it answers."""
    output: str
    """The result text."""


ItemContent = TextContent | FunctionCallContent | FunctionCallOutputContent


@dataclass(frozen=True)
class ItemCreate:
    """``conversation.item.create``."""

    item: dict[str, Any]
    """The item as sent (echoed back in ``conversation.item.added``/``done``)."""
    item_id: str
    """Its ``id`` when it is a string, else a new one."""
    content: ItemContent
    """What it asks of the conversation."""
    event_id: str | None = None
    """The client's ``event_id``."""


@dataclass(frozen=True)
class ItemTruncate:
    """``conversation.item.truncate``: acknowledged (the model already stopped where the user barged in)."""

    item_id: str
    """The assistant message's id."""
    content_index: int
    """Its content part (0)."""
    audio_end_ms: int
    """Where the client stopped playing it."""
    event_id: str | None = None
    """The client's ``event_id``."""


ClientEvent = SessionUpdate | AudioAppend | AudioCommit | AudioClear | ResponseCreate | ItemCreate | ItemTruncate
SUPPORTED = (
    "conversation.item.create",
    "conversation.item.truncate",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "response.cancel",
    "response.create",
    "session.update",
)
"""The event types this endpoint takes (``response.cancel`` only to refuse it with a reason)."""


def decode_client_event(data: str | bytes) -> ClientEvent:
    """One text frame → a typed event, or ``ClientError`` naming the field (with the frame's ``event_id``)."""
    try:
        event = json.loads(data)
    except RecursionError:
        raise ClientError("frame: not JSON: nested too deeply", None, "invalid_json") from None
    except ValueError as e:  # JSONDecodeError, undecodable bytes, an integer of too many digits
        raise ClientError(f"frame: not JSON: {show(str(e))}", None, "invalid_json") from None
    if not isinstance(event, dict):
        raise ClientError("type: an event is a JSON object with a string 'type'", "type", "invalid_event")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    try:
        if not isinstance(event.get("type"), str):
            raise ClientError("type: an event is a JSON object with a string 'type'", "type", "invalid_event")
        return _decode(event, event_id)
    except ClientError as e:
        e.event_id = event_id
        raise


def _decode(event: dict[str, Any], event_id: str | None) -> ClientEvent:
    kind = event["type"]
    if kind == "session.update":
        return SessionUpdate(check_session(event.get("session")), event_id)
    if kind == "input_audio_buffer.append":
        return AudioAppend(_pcm(event.get("audio")), event_id)
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id)
    if kind == "response.create":
        return ResponseCreate(event_id)
    if kind == "response.cancel":
        raise ClientError(
            "type 'response.cancel': the model yields the floor itself when the user speaks (barge-in); "
            "a response cannot be cancelled by an event",
            "type",
            "unsupported_event",
        )
    if kind == "conversation.item.create":
        return _item_create(event.get("item"), event_id)
    if kind == "conversation.item.truncate":
        return _item_truncate(event, event_id)
    raise ClientError(
        f"type {show(kind)}: unsupported event type; this server takes: {', '.join(SUPPORTED)}",
        "type",
        "unknown_event",
    )


def _pcm(audio: object) -> bytes:
    if not isinstance(audio, str):
        raise ClientError("audio: base64-encoded PCM16 (24 kHz mono) expected as a string", "audio")
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
        raise ClientError("audio: not valid base64", "audio") from None
    if len(pcm) % 2:
        raise ClientError(f"audio: {len(pcm)} bytes, an odd count: PCM16 samples are 2 bytes each", "audio")
    return pcm


def _text(value: object, where: str, what: str = "a string expected") -> str:
    """``value`` as a string that UTF-8 can carry (JSON allows lone surrogates; protobuf strings do not)."""
    if not isinstance(value, str):
        raise ClientError(f"{where}: {what}", where)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ClientError(f"{where}: not valid Unicode (a lone surrogate \\ud800-\\udfff)", where) from None
    return value


def _item_create(item: object, event_id: str | None) -> ItemCreate:
    if not isinstance(item, dict):
        raise ClientError("item: an object expected", "item")
    kind = item.get("type")
    content: ItemContent
    if kind == "message":
        content = _message(item)
    elif kind == "function_call":
        content = _function_call(item)
    elif kind == "function_call_output":
        content = _function_call_output(item)
    else:
        raise ClientError(
            f"item.type {show(kind)}: supported are 'message' (input_text), 'function_call' (runs on the "
            "background agent) and 'function_call_output' (fed to the model)",
            "item.type",
        )
    item_id = item.get("id")  # a missing or empty id is the server's to give
    return ItemCreate(item, item_id if isinstance(item_id, str) and item_id else new_id("item"), content, event_id)


def _message(item: dict[str, Any]) -> TextContent:
    if item.get("role") not in ("user", "system"):
        raise ClientError(f"item.role {show(item.get('role'))}: 'user' or 'system' expected", "item.role")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ClientError("item.content: a non-empty list expected", "item.content")
    texts = []
    for i, part in enumerate(content):
        where = f"item.content[{i}]"
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise ClientError(
                f"{where}: only {{type: 'input_text', text}} parts (send audio with input_audio_buffer.append)", where
            )
        texts.append(_text(part.get("text"), f"{where}.text"))
    text = "\n".join(texts)
    if (size := len(text.encode())) > MAX_TEXT_BYTES:
        raise ClientError(f"item.content: {size} bytes of text, limit {MAX_TEXT_BYTES}", "item.content")
    return TextContent(text)


def _call_id(item: dict[str, Any]) -> str:
    call_id = _text(item.get("call_id"), "item.call_id", "a non-empty string expected")
    if not call_id or len(call_id) > MAX_CALL_ID_CHARS:
        raise ClientError(f"item.call_id: {len(call_id)} characters, must be 1 to {MAX_CALL_ID_CHARS}", "item.call_id")
    return call_id


def _function_call(item: dict[str, Any]) -> FunctionCallContent:
    name = _text(item.get("name"), "item.name", "the tool to run (string) expected")
    if not name:
        raise ClientError("item.name: the tool to run (string) expected", "item.name")
    args = _text(item.get("arguments", "{}"), "item.arguments", "a JSON object as a string expected")
    call_id = _call_id(item)
    if MODEL_CALL_ID.fullmatch(call_id):
        raise ClientError(
            f"item.call_id {call_id!r}: m1, m2, ... name the model's own tool calls; pick another", "item.call_id"
        )
    return FunctionCallContent(call_id, name, args)


def _function_call_output(item: dict[str, Any]) -> FunctionCallOutputContent:
    call_id = _call_id(item)
    output = _text(item.get("output"), "item.output")
    if (size := len(output.encode())) > MAX_TEXT_BYTES:
        raise ClientError(f"item.output: {size} bytes, limit {MAX_TEXT_BYTES}", "item.output")
    return FunctionCallOutputContent(call_id, output)


def call_result(content: FunctionCallOutputContent, tool: str) -> str:
    """The text a ``function_call_output`` reaches the model as (the engine's ``[[result ...]]`` form), or
    ``ClientError`` when it is longer than the engine takes (JSON escaping can make it several times longer)."""
    text = result_text(content.call_id, tool, "DONE", content.output)
    if (size := len(text.encode())) > MAX_TEXT_BYTES:
        raise ClientError(
            f"item.output: {size} bytes as the model's [[result ...]] text, limit {MAX_TEXT_BYTES}", "item.output"
        )
    return text


def _item_truncate(event: dict[str, Any], event_id: str | None) -> ItemTruncate:
    item_id, content_index, end = event.get("item_id"), event.get("content_index", 0), event.get("audio_end_ms")
    if not isinstance(item_id, str):
        raise ClientError("item_id: the assistant message's id (string) expected", "item_id")
    if not isinstance(end, int) or isinstance(end, bool) or end < 0:
        raise ClientError(f"audio_end_ms {show(end)}: a non-negative integer expected", "audio_end_ms")
    if not isinstance(content_index, int) or isinstance(content_index, bool) or content_index < 0:
        raise ClientError(f"content_index {show(content_index)}: a non-negative integer expected", "content_index")
    return ItemTruncate(item_id, content_index, end, event_id)
