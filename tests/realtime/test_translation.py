"""How the model's floor decisions, text, tool calls and agent results become Realtime events, for the cases
the tiny model cannot be made to produce on demand (its own tool call, a barge-in): the translation
(``translate.Translator``, no socket) is fed the engine's server events directly and what it returns is
checked, every event against the official SDK's types. The model's tool calls reach the bridge as the
engine announces them: the call's first ``AgentEvent`` carries the arguments the engine parsed (the bridge
does not parse text)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from duplex.serving.realtime.metrics import RealtimeMetrics
from duplex.serving.realtime.protocol import EventFactory
from duplex.serving.realtime.translate import Translator
from duplex.v1 import duplex_pb2 as pb

from .conftest import SERVER_EVENT

RATE, FRAME_MS, CHUNK = 16000, 40, 3200
FRAME = RATE * FRAME_MS // 1000
LISTEN, SPEAK, YIELD = pb.FLOOR_LISTEN, pb.FLOOR_SPEAK, pb.FLOOR_YIELD


class Sink:
    """Collects what the translator returns, each event validated against the SDK's types."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator
        self.events: list[dict[str, Any]] = []

    def feed(self, event: pb.ServerEvent) -> None:
        for out in self.translator.translate(event):
            SERVER_EVENT.validate_python(out)
            self.events.append(out)

    def take(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out


def session() -> tuple[Sink, Sink]:
    sink = Sink(Translator(EventFactory(), RealtimeMetrics(CollectorRegistry()), duplex_events=False))
    return sink, sink


def audio(seq: int, controls: list[int], loud: bool) -> pb.ServerEvent:
    pcm = (np.sin(np.arange(CHUNK) * 0.3) * 8000).astype("<i2").tobytes() if loud else b""
    return pb.ServerEvent(
        audio=pb.ModelAudio(seq=seq, pcm=pcm, samples=CHUNK, output_sample=seq * CHUNK, control=controls)
    )


def queued(call_id: str, tool: str, arguments_json: str) -> pb.AgentEvent:
    """The engine's first event of a call it queued: the arguments as it parsed or received them."""
    return pb.AgentEvent(job_id=call_id, tool=tool, state=pb.QUEUED, arguments_json=arguments_json)


def ready() -> pb.ServerEvent:
    fmt = pb.AudioFormat(sample_rate=RATE, channels=1, encoding=pb.PCM16_LE)
    return pb.ServerEvent(
        ready=pb.SessionReady(
            session_id="s", input_format=fmt, output_format=fmt, chunk_ms=200, frame_ms=FRAME_MS, chunk_samples=CHUNK
        )
    )


RESPONSE_OPENS = [
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
]
"""The events that open a response: the user's turn ends and the model's response and its audio part start."""


def test_turn_tool_call_and_barge_in() -> None:
    s, sink = session()
    s.feed(ready())
    assert [(e["type"], e["audio_start_ms"]) for e in sink.take()] == [("input_audio_buffer.speech_started", 0)]

    s.feed(audio(0, [LISTEN] * 5, loud=False))
    assert sink.take() == []  # nobody's voice from the model: nothing to send

    # the model takes the floor at frame 2 of chunk 1: the user's turn ended there (200 ms + 2 frames)
    s.feed(audio(1, [LISTEN, LISTEN, SPEAK, SPEAK, SPEAK], loud=True))
    s.feed(pb.ServerEvent(turn=pb.TurnEvent(seq=1, type=pb.MODEL_TURN_START, frame=2)))
    got = sink.take()
    assert [e["type"] for e in got] == [*RESPONSE_OPENS, "response.output_audio.delta"]
    assert got[0]["audio_end_ms"] == 280
    response_id = got[2]["response"]["id"]
    assert len(got[-1]["delta"]) > 0

    s.feed(pb.ServerEvent(text=pb.TextDelta(seq=1, text='It is [[call clock {"tz": "UTC"}]]')))
    assert [e["type"] for e in sink.take()] == ["response.output_audio_transcript.delta"]
    # the engine parsed the call and queued it: its QUEUED carries the arguments
    s.feed(pb.ServerEvent(agent=queued("m1", "clock", '{"tz": "UTC"}')))
    got = sink.take()
    assert [e["type"] for e in got] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    done = got[2]
    assert (done["call_id"], done["name"], done["arguments"], done["response_id"], done["output_index"]) == (
        "m1",
        "clock",
        '{"tz": "UTC"}',
        response_id,
        1,
    )

    # the user barges in after one chunk of the model's turn had been sent: cut at 200 ms, response cancelled
    s.feed(audio(2, [SPEAK, YIELD, LISTEN, LISTEN, LISTEN], loud=True))
    barge = pb.TurnEvent(
        seq=2, type=pb.USER_BARGE_IN, frame=1, output_sample=2 * CHUNK + FRAME, truncated_at_sample=CHUNK
    )
    s.feed(pb.ServerEvent(turn=barge))
    got = sink.take()
    kinds = [e["type"] for e in got]
    assert kinds[0] == "response.output_audio.delta"
    truncated = got[kinds.index("conversation.item.truncated")]
    assert truncated["audio_end_ms"] == 200 and truncated["item_id"] == got[0]["item_id"]
    final = got[kinds.index("response.done")]["response"]
    assert final["id"] == response_id and final["status"] == "cancelled"
    assert final["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["status"] == "incomplete"
    assert final["output"][0]["content"][0]["transcript"] == 'It is [[call clock {"tz": "UTC"}]]'
    assert kinds[-1] == "input_audio_buffer.speech_started"
    assert got[-1]["audio_start_ms"] == (2 * CHUNK + FRAME) * 1000 // RATE

    # the agent's result for the model's call: a function_call_output item
    result = pb.AgentEvent(job_id="m1", tool="clock", state=pb.DONE, detail="12:00 UTC")
    s.feed(pb.ServerEvent(agent=result))
    got = sink.take()
    assert [e["type"] for e in got] == ["conversation.item.added", "conversation.item.done"]
    assert got[1]["item"]["output"] == "12:00 UTC"
    assert got[1]["item"]["call_id"] == "m1" and got[1]["item"]["type"] == "function_call_output"


def test_tool_call_outside_a_turn_is_a_response_of_its_own() -> None:
    s, sink = session()
    s.feed(ready())
    sink.take()
    s.feed(pb.ServerEvent(text=pb.TextDelta(seq=0, text='[[call calculator {"expression": ')))
    s.feed(pb.ServerEvent(text=pb.TextDelta(seq=1, text='"1+1"}]] [[call nope]]')))
    assert sink.take() == []  # no turn is open: the text is no transcript, and the calls wait for the engine
    s.feed(pb.ServerEvent(agent=queued("m1", "calculator", '{"expression": "1+1"}')))
    got = sink.take()
    assert [e["type"] for e in got] == [
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]  # the malformed second call is not a function call (the engine reports it FAILED itself)
    final = got[-1]["response"]
    assert final["status"] == "completed" and final["metadata"]["duplex_kind"] == "call"
    assert [o["type"] for o in final["output"]] == ["function_call"]
    assert final["output"][0]["arguments"] == '{"expression": "1+1"}'
    failed = pb.AgentEvent(job_id="m2", tool="", state=pb.FAILED, detail="tool name expected")
    s.feed(pb.ServerEvent(agent=failed))
    assert json.loads(sink.take()[1]["item"]["output"]) == {"error": "tool name expected"}


def test_function_call_arguments_come_from_the_engines_event() -> None:
    """The function_call's arguments are the AgentEvent's: a ``[[call ...]]`` in the text alone makes none, an
    event makes one whatever the text said; a call the engine refused before queueing (its FAILED carries the
    arguments) is a function_call followed by its error. (The client's own calls are not announced back:
    test_sdk.py.)"""
    s, sink = session()
    s.feed(ready())
    sink.take()
    s.feed(pb.ServerEvent(text=pb.TextDelta(seq=0, text='[[call clock {"tz": "UTC"}]]')))
    assert sink.take() == []  # no second parser: text alone is not a call

    s.feed(pb.ServerEvent(agent=queued("m1", "clock", '{"tz": "Europe/Paris"}')))
    got = sink.take()
    args = [e for e in got if e["type"].startswith("response.function_call_arguments.")]
    assert [(e["type"], e.get("delta", e.get("arguments"))) for e in args] == [
        ("response.function_call_arguments.delta", '{"tz": "Europe/Paris"}'),
        ("response.function_call_arguments.done", '{"tz": "Europe/Paris"}'),
    ]
    assert got[-1]["response"]["output"][0]["arguments"] == '{"tz": "Europe/Paris"}'
    running = pb.AgentEvent(job_id="m1", tool="clock", state=pb.RUNNING)  # no arguments after the first event
    s.feed(pb.ServerEvent(agent=running))
    assert sink.take() == []

    refused = pb.AgentEvent(
        job_id="m2", tool="teleport", state=pb.FAILED, detail="unknown tool 'teleport'", arguments_json='{"to": "x"}'
    )
    s.feed(pb.ServerEvent(agent=refused))
    got = sink.take()
    assert [e["type"] for e in got] == [
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert (got[3]["call_id"], got[3]["name"], got[3]["arguments"]) == ("m2", "teleport", '{"to": "x"}')
    assert got[-1]["item"]["call_id"] == "m2" and json.loads(got[-1]["item"]["output"]) == {
        "error": "unknown tool 'teleport'"
    }


def test_backchannel_is_a_short_response_and_the_user_keeps_the_floor() -> None:
    s, sink = session()
    s.feed(ready())
    sink.take()
    s.feed(audio(0, [LISTEN, pb.FLOOR_BACKCHANNEL, pb.FLOOR_BACKCHANNEL, LISTEN, LISTEN], loud=True))
    s.feed(audio(1, [LISTEN] * 5, loud=False))
    kinds = [e["type"] for e in sink.events]
    assert "input_audio_buffer.speech_stopped" not in kinds
    assert kinds.count("response.output_audio.delta") == 2 and kinds[-1] == "response.done"
    assert sink.events[-1]["response"]["metadata"]["duplex_kind"] == "backchannel"


def test_a_response_open_when_the_conversation_ends_is_incomplete_or_failed() -> None:
    for failed, status in ((False, "incomplete"), (True, "failed")):
        s, sink = session()
        s.feed(ready())
        s.feed(audio(0, [SPEAK] * 5, loud=True))
        sink.take()
        got = s.translator.end(failed=failed)
        assert [e["type"] for e in got][-1] == "response.done"
        assert got[-1]["response"]["status"] == status and got[-1]["response"]["output"][0]["status"] == "incomplete"
        assert s.translator.end(failed=failed) == []  # nothing is open any more


def test_the_end_of_input_opens_one_response_that_completes_with_the_conversation() -> None:
    """``input_audio_buffer.commit`` to a model with a tail (``end_input``): the user's turn is committed where
    the input ended, every later chunk's audio and text go to one response whatever the model's turn events
    say, and the conversation's OK end completes it (not ``incomplete``, as a conversation cut short is)."""
    s, sink = session()
    s.feed(ready())
    s.feed(audio(0, [LISTEN] * 5, loud=False))
    sink.take()
    for out in s.translator.end_input(chunks=3):
        SERVER_EVENT.validate_python(out)
        sink.events.append(out)
    got = sink.take()
    assert [e["type"] for e in got] == RESPONSE_OPENS
    assert got[0]["audio_end_ms"] == 600 and got[0]["item_id"] == got[1]["item_id"]
    response_id = got[2]["response"]["id"]
    s.feed(audio(1, [LISTEN] * 5, loud=True))
    s.feed(pb.ServerEvent(text=pb.TextDelta(seq=1, text="Bonjour")))
    s.feed(pb.ServerEvent(turn=pb.TurnEvent(seq=1, type=pb.MODEL_TURN_END, frame=0)))
    s.feed(audio(2, [LISTEN] * 5, loud=False))
    got = sink.take()
    assert [e["type"] for e in got] == [
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
    ]
    assert {e["response_id"] for e in got} == {response_id}
    for out in s.translator.end(failed=False):
        SERVER_EVENT.validate_python(out)
        sink.events.append(out)
    done = sink.take()[-1]
    assert done["type"] == "response.done" and done["response"]["id"] == response_id
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Bonjour"


def test_a_conversation_cut_short_leaves_its_response_incomplete() -> None:
    s, sink = session()
    s.feed(ready())
    s.feed(audio(0, [SPEAK] * 5, loud=True))
    sink.take()
    done = s.translator.end(failed=False)[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "incomplete"
