"""Property tests (hypothesis) over every decoder and validator a client's stream goes through in the engine:
``parse_event`` on random and mutated bytes, ``event_kind``, ``check_start``, ``check_audio``, ``check_video``,
``check_text`` and ``check_agent``. Properties: nothing raises but the validators' own ``InputError``, whose
status is a client-error code and whose message names the field it is about; what passes is well-formed.
``FUZZ_EXAMPLES`` cases per test: with test_realtime_events.py the folder runs about 11,500 cases
(7 × 700 here, 4 × 1,100 + 2,200 there), about 100 s of CPU."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex.model.config import ModelConfig
from duplex.model.family_duplex import DuplexServed
from duplex.model.model import DuplexModel
from duplex.serving.engine import validate as v
from duplex.v1 import duplex_pb2 as pb

FUZZ_EXAMPLES = 700
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = ModelConfig()
SERVED = DuplexServed(DuplexModel(CFG))
CHUNK_MS = 200
CHUNK_SAMPLES = CFG.frames_per_chunk(CHUNK_MS) * CFG.frame_samples
TOOLS = ["clock", "calculator"]
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FIELD_OF_KIND = {
    "start": "start.",
    "audio": "audio.",
    "video": "video",
    "text": "text.text",
    "agent": "agent.",
}

int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
uint64 = st.integers(0, 2**64 - 1)


def valid_events() -> list[bytes]:
    return [
        pb.ClientEvent(start=pb.SessionStart(format=pb.AudioFormat(sample_rate=16000, channels=1))).SerializeToString(),
        pb.ClientEvent(audio=pb.AudioChunk(seq=0, pcm=b"\x01\x00" * CHUNK_SAMPLES)).SerializeToString(),
        pb.ClientEvent(
            video=pb.VideoFrame(
                seq=0, rgb=b"\x80" * (CFG.video_size**2 * 3), width=CFG.video_size, height=CFG.video_size
            )
        ).SerializeToString(),
        pb.ClientEvent(text=pb.TextInput(text="hello")).SerializeToString(),
        pb.ClientEvent(agent=pb.AgentRequest(call_id="c1", tool="clock", arguments_json="{}")).SerializeToString(),
        pb.ClientEvent(end=pb.EndOfStream()).SerializeToString(),
    ]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with bytes flipped, inserted, deleted or the message cut."""
    data = bytearray(draw(st.sampled_from(valid_events())))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


class Stream:
    """The engine reader's dispatch (serving/engine/server.py ``_read``) over the real validators."""

    def __init__(self) -> None:
        self.started = False
        self.expected_seq = 0
        self.last_video = -1

    def feed(self, raw: bytes) -> str:
        ev = v.parse_event(raw)
        kind = v.event_kind(ev)
        assert isinstance(ev, pb.ClientEvent)
        if kind == "start":
            v.check_start(ev.start, SERVED, "tiny", CHUNK_MS, TOOLS)
        elif kind == "audio":
            pcm = v.check_audio(ev.audio, self.expected_seq, CHUNK_SAMPLES)
            assert pcm == ev.audio.pcm and len(pcm) == 2 * CHUNK_SAMPLES
            self.expected_seq += 1
        elif kind == "video":
            frame = v.check_video(ev.video, self.last_video, CFG.video_size)
            assert frame.shape == (3, CFG.video_size, CFG.video_size)
            self.last_video = int(ev.video.seq)
        elif kind == "text":
            assert len(v.check_text(ev.text, SERVED)) <= v.MAX_TEXT_BYTES
        elif kind == "agent":
            v.check_agent(ev.agent)
        return kind


def assert_input_error(e: v.InputError, kind: str | None) -> None:
    assert e.code in CLIENT_ERRORS, e.code
    field = FIELD_OF_KIND.get(kind or "", "ClientEvent")
    assert e.message.startswith(field) or e.message.startswith("ClientEvent"), (kind, e.message)


def feed_all(messages: list[bytes]) -> None:
    stream = Stream()
    for raw in messages:
        ev = v.parse_event(raw)
        kind = ev.WhichOneof("event") if isinstance(ev, pb.ClientEvent) else None
        try:
            stream.feed(raw)
        except v.InputError as e:
            assert_input_error(e, kind)
            return  # the engine ends the session at its first bad message


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    feed_all([data])


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=6))
def test_mutated_event_streams(messages: list[bytes]) -> None:
    feed_all(messages)


@FUZZ
@given(
    model=st.sampled_from(["", "tiny", "gpt-9"]) | st.text(max_size=40),
    rate=st.sampled_from([0, 16000, 44100]) | int32,
    channels=st.sampled_from([0, 1, 2]) | int32,
    encoding=st.integers(0, 5),
    chunk_ms=st.sampled_from([0, CHUNK_MS, 120]) | int32,
    instructions=st.text(max_size=5000),
    tools=st.lists(st.sampled_from(TOOLS) | st.text(max_size=10), max_size=4),
    session_id=st.text(max_size=200),
    client_time_us=int64,
)
def test_session_start(
    model: str,
    rate: int,
    channels: int,
    encoding: int,
    chunk_ms: int,
    instructions: str,
    tools: list[str],
    session_id: str,
    client_time_us: int,
) -> None:
    start = pb.SessionStart(
        model=model,
        format=pb.AudioFormat(sample_rate=rate, channels=channels, encoding=encoding),  # type: ignore[arg-type]
        chunk_ms=chunk_ms,
        instructions=instructions,
        tools=tools,
        session_id=session_id,
        client_time_us=client_time_us,
    )
    try:
        neg = v.check_start(start, SERVED, "tiny", CHUNK_MS, TOOLS)
    except v.InputError as e:
        assert_input_error(e, "start")
        return
    assert neg.chunk_ms == CHUNK_MS and set(neg.tools) <= set(TOOLS) and len(neg.session_id) <= 128


@FUZZ
@given(
    seq=uint64,
    expected=st.integers(0, 1000),
    pcm=st.binary(max_size=2 * CHUNK_SAMPLES + 4) | st.just(b"\x00\x80" * CHUNK_SAMPLES),
)
def test_audio_chunk(seq: int, expected: int, pcm: bytes) -> None:
    try:
        checked = v.check_audio(pb.AudioChunk(seq=seq, pcm=pcm), expected, CHUNK_SAMPLES)
    except v.InputError as e:
        assert_input_error(e, "audio")
        return
    assert seq == expected and checked == pcm and len(checked) == 2 * CHUNK_SAMPLES


@FUZZ
@given(
    seq=uint64,
    last=st.integers(-1, 100),
    width=int32,
    height=int32,
    rgb=st.binary(max_size=64) | st.just(b"\x00" * (CFG.video_size**2 * 3)),
    size=st.sampled_from([0, CFG.video_size]),
)
def test_video_frame(seq: int, last: int, width: int, height: int, rgb: bytes, size: int) -> None:
    frame = pb.VideoFrame(seq=seq, rgb=rgb, width=width, height=height)
    try:
        out = v.check_video(frame, last, size)
    except v.InputError as e:
        assert_input_error(e, "video")
        return
    assert out.shape == (3, size, size) and float(out.max()) <= 1.0


@FUZZ
@given(st.text(max_size=5000))
def test_text_input(text: str) -> None:
    try:
        tokens = v.check_text(pb.TextInput(text=text), SERVED)
    except v.InputError as e:
        assert_input_error(e, "text")
        return
    assert tokens == list(text.encode())


json_ish = st.one_of(
    st.just(""),
    st.text(max_size=100),
    st.just("{}"),
    st.just('{"expression": "1+2"}'),
    st.just("[1, 2]"),
    st.just("null"),
    st.just("{" * 1000),
    st.integers(16385, 16400).map(lambda n: "a" * n),
)


@FUZZ
@given(
    call_id=st.text(max_size=300) | st.sampled_from(["m1", "m42", "c1"]),
    tool=st.text(max_size=80) | st.sampled_from(TOOLS),
    arguments=json_ish,
    deadline=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -1.0, 1e300]),
)
def test_agent_request(call_id: str, tool: str, arguments: str, deadline: float) -> None:
    req = pb.AgentRequest(call_id=call_id, tool=tool, arguments_json=arguments, deadline_s=deadline)
    try:
        call = v.check_agent(req)
    except v.InputError as e:
        assert_input_error(e, "agent")
        return
    assert 1 <= len(call.call_id) <= v.MAX_CALL_ID_CHARS and math.isfinite(call.deadline_s)
    if call.problem is not None:
        assert call.problem.startswith(("tool:", "arguments_json:")), call.problem


@pytest.mark.parametrize("raw", valid_events())
def test_valid_events_pass(raw: bytes) -> None:
    """The seeds of the mutations are accepted (so the properties above are not vacuous)."""
    Stream().feed(raw)
