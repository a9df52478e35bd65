"""Property tests (hypothesis) over the Realtime endpoint's client-event decoder (``decode_client_event``) and
session settings (``SessionSettings.apply``): arbitrary JSON values and text, every GA client event type the
endpoint takes with fields deleted, added or replaced by values of any type, huge and invalid base64, odd
audio formats. Properties: the decoder returns a typed event or raises the endpoint's ``ClientError`` whose
message starts with the field it names — never another exception; what it returns is well-formed; a refused
settings change changes nothing. ``FUZZ_EXAMPLES`` cases per test (see tests/fuzz/test_stream_validators.py
for the count of the whole folder)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex.serving.engine import validate as engine_validate
from duplex.serving.realtime import events as e
from duplex.serving.realtime.protocol import _TOOL_NAME, MAX_INSTRUCTIONS_BYTES, ClientError, SessionSettings

FUZZ_EXAMPLES = 1100
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value (text with lone surrogates included: JSON can carry them, UTF-8 cannot)."""

PCM = base64.b64encode(b"\x01\x00" * 240).decode()


def valid_events() -> list[dict[str, Any]]:
    """One of every client event type the endpoint takes (as the ``openai`` SDK sends them)."""
    fmt = {"type": "audio/pcm", "rate": 24000}
    return [
        {
            "type": "session.update",
            "event_id": "e1",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "tools": [{"type": "function", "name": "clock"}],
                "output_modalities": ["audio"],
                "audio": {"input": {"format": fmt, "turn_detection": None}, "output": {"format": fmt, "voice": "x"}},
                "tool_choice": "auto",
            },
        },
        {"type": "input_audio_buffer.append", "event_id": "e2", "audio": PCM},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call", "call_id": "c1", "name": "clock", "arguments": "{}"},
        },
        {
            "type": "conversation.item.create",
            "item": {"id": "item_1", "type": "function_call_output", "call_id": "c1", "output": '{"t": 1}'},
        },
        {"type": "conversation.item.truncate", "item_id": "item_2", "content_index": 0, "audio_end_ms": 1500},
        {"type": "response.create", "response": {}},
    ]


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside a JSON value (dict keys and list indexes)."""
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*at, i))
    return out


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with 1-4 fields anywhere in it replaced by any JSON value, deleted, or added."""
    event = copy.deepcopy(draw(st.sampled_from(valid_events())))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(event)[1:] or [("type",)]))
        parent: Any = event
        for step in where[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[where[-1]] = draw(json_values)
        elif op == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
        if not isinstance(event, dict) or "type" not in event:
            break
    return event


def decode(frame: str | bytes) -> e.ClientEvent | None:
    """Decode; check a refusal names its field and anything returned is well-formed."""
    try:
        event = e.decode_client_event(frame)
    except ClientError as err:
        if err.param is None:
            assert err.code in ("invalid_json", "invalid_frame") and err.message.startswith("frame:"), err.message
        else:
            assert err.message.startswith(err.param), (err.param, err.message)
        assert len(err.message) < 1024, "an error message does not grow with the input"
        json.dumps({"message": err.message, "param": err.param})  # it can be sent
        return None
    check_well_formed(event)
    return event


def check_well_formed(event: e.ClientEvent) -> None:
    if isinstance(event, e.AudioAppend):
        assert len(event.pcm) % 2 == 0
    elif isinstance(event, e.SessionUpdate):
        p = event.patch
        assert p.instructions is None or len(p.instructions.encode()) <= MAX_INSTRUCTIONS_BYTES
        assert p.tools is None or all(_TOOL_NAME.fullmatch(t) for t in p.tools)
    elif isinstance(event, e.ItemCreate):
        c = event.content
        if isinstance(c, e.TextContent):
            assert len(c.text.encode()) <= e.MAX_TEXT_BYTES
        elif isinstance(c, e.FunctionCallContent):
            assert c.name and 1 <= len(c.call_id) <= e.MAX_CALL_ID_CHARS and not e.MODEL_CALL_ID.fullmatch(c.call_id)
            c.arguments.encode()
        else:
            assert 1 <= len(c.call_id) <= e.MAX_CALL_ID_CHARS
            try:
                assert len(e.call_result(c, "clock").encode()) <= e.MAX_TEXT_BYTES
            except ClientError as err:
                assert err.param == "item.output" and err.message.startswith("item.output")
        assert isinstance(event.item_id, str) and event.item_id
        json.dumps(event.item)  # echoed back in conversation.item.added/done
    elif isinstance(event, e.ItemTruncate):
        assert event.audio_end_ms >= 0 and event.content_index >= 0


@FUZZ
@given(json_values)
def test_any_json_value(value: Any) -> None:
    decode(json.dumps(value))


@settings(FUZZ, max_examples=2 * FUZZ_EXAMPLES)
@given(st.text(max_size=300) | st.binary(max_size=300) | st.integers(1, 5000).map(lambda n: "[" * n + "]" * n))
def test_any_text_or_bytes(frame: str | bytes) -> None:
    decode(frame)


@FUZZ
@given(mutated_events())
def test_mutated_events(event: dict[str, Any]) -> None:
    decode(json.dumps(event))


base64_ish = st.one_of(
    st.binary(max_size=4000).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCDabcd0123+/=-_ \n", max_size=400),
    st.text(max_size=100),
    st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode()[:-1]),
    st.sampled_from([1, 1000, 300_000]).map(lambda n: "QUFB" * n),
)
"""Valid base64 of any length (odd byte counts too), its alphabet in wrong places, any text, cut, huge."""


@FUZZ
@given(audio=base64_ish | json_values, event_id=json_values)
def test_audio_append(audio: Any, event_id: Any) -> None:
    event = decode(json.dumps({"type": "input_audio_buffer.append", "audio": audio, "event_id": event_id}))
    if event is not None:
        assert isinstance(event, e.AudioAppend) and event.pcm == base64.b64decode(audio, validate=True)
        assert event.event_id == (event_id if isinstance(event_id, str) else None)


formats = st.dictionaries(
    st.sampled_from(["type", "rate", "channels"]) | st.text(max_size=8),
    st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma", 24000, 16000, 8000, 0, -1, 24000.0, "24000", True])
    | json_values,
    max_size=3,
)


@FUZZ
@given(
    side=st.sampled_from(["input", "output"]) | st.text(max_size=8),
    fmt=formats | json_values,
    instructions=st.text(max_size=40) | st.integers(4090, 4100).map(lambda n: "é" * (n // 2)) | json_values,
    tools=st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": st.text(max_size=12)}), max_size=3)
    | json_values,
    started=st.booleans(),
)
def test_session_update(side: str, fmt: Any, instructions: Any, tools: Any, started: bool) -> None:
    session = {"type": "realtime", "audio": {side: {"format": fmt}}, "instructions": instructions, "tools": tools}
    event = decode(json.dumps({"type": "session.update", "session": session}))
    settings = SessionSettings("Before.", ["clock"])
    if event is None:
        return
    assert isinstance(event, e.SessionUpdate)
    assert side in ("input", "output") and isinstance(fmt, dict)
    assert fmt.get("type", "audio/pcm") == "audio/pcm" and fmt.get("rate", 24000) == 24000
    try:
        settings.apply(event.patch, started)
    except ClientError as err:
        assert started and err.param in ("session.instructions", "session.tools"), err.message
        assert (settings.instructions, settings.tools) == ("Before.", ["clock"]), "a refused update changed nothing"
        return
    assert settings.instructions == ("Before." if instructions is None else instructions)
    assert settings.tools == [t["name"] for t in tools]


@pytest.mark.parametrize("event", valid_events(), ids=lambda ev: ev["type"])
def test_valid_events_decode(event: dict[str, Any]) -> None:
    """The seeds of the mutations are accepted (so the properties above are not vacuous)."""
    got = decode(json.dumps(event))
    assert got is not None and got.event_id == event.get("event_id")


@pytest.mark.parametrize(
    "frame, param",
    [
        ("[" * 100_000, None),  # found by the fuzzer: RecursionError out of json.loads
        (json.dumps({"type": "session.update", "session": {"instructions": "\ud800"}}), "session.instructions"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "a\udfff"}]}}), "item.content[0].text"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "x" * 5000}]}}), "item.content"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "function_call", "call_id": "m1",
                     "name": "clock"}}), "item.call_id"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "QUFB\u00e9"}), "audio"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": 1, "content_index": True}),
         "content_index"),
    ],
    ids=["deep", "surrogate-instructions", "surrogate-text", "long-text", "model-call-id", "non-ascii-base64",
         "bool-index"],
)  # fmt: skip
def test_found_by_fuzzing(frame: str, param: str | None) -> None:
    """Frames that once escaped as another exception, or that the engine would have ended the conversation
    for (a lone surrogate, text over its limit, a model call id): now a ClientError naming the field."""
    with pytest.raises(ClientError) as err:
        e.decode_client_event(frame)
    assert err.value.param == param and err.value.message.startswith(param or "frame:")


def test_an_empty_item_id_gets_one_from_the_server() -> None:
    """Found by fuzzing: ``"id": ""`` was kept as the item's id, which no later event could name."""
    frame = {"type": "conversation.item.create", "item": {"id": "", "type": "function_call_output", "call_id": "c1",
             "output": "{}"}}  # fmt: skip
    event = e.decode_client_event(json.dumps(frame))
    assert isinstance(event, e.ItemCreate) and event.item_id.startswith("item")


def test_function_call_output_over_the_engine_limit_once_escaped() -> None:
    """Control characters are 6 bytes each in the [[result ...]] text: the limit is on that text."""
    content = e.FunctionCallOutputContent("c1", "\x01" * 1000)
    with pytest.raises(ClientError, match=r"^item\.output: 6\d\d\d bytes"):
        e.call_result(content, "clock")


def test_limits_are_the_engines() -> None:
    assert e.MAX_TEXT_BYTES == engine_validate.MAX_TEXT_BYTES
    assert e.MAX_CALL_ID_CHARS == engine_validate.MAX_CALL_ID_CHARS
    assert MAX_INSTRUCTIONS_BYTES == engine_validate.MAX_TEXT_BYTES
