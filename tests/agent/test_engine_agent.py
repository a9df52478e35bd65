"""The background agent inside live conversations: a real engine over gRPC on loopback, a real redis-server
and an in-process ``AgentWorker``. Jobs run while every audio chunk is answered in its step; bad calls fail
before any worker sees them; the model's own ``[[call ...]]`` text becomes a job; a call's first event (QUEUED,
or FAILED when refused) carries its arguments, the model's as the engine parsed them; a Redis outage fails calls
soft while the audio flows on, and the agent works again after Redis returns."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from redis.asyncio import Redis
from serving.conftest import LoopThread, tone, wait_serving
from serving.test_bad_input import send_raw

from duplex.model.family_duplex import ByteTextDecoder
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource
from duplex.serving.agent.protocol import AgentState, AgentUpdate, StreamNames
from duplex.serving.agent.redis_server import RedisServer
from duplex.serving.agent.toolcall import result_text
from duplex.serving.agent.tools import registry_for
from duplex.serving.agent.worker import AgentWorker
from duplex.serving.client import SystemClock, split_chunks, start_event
from duplex.serving.engine.agent_link import NO_AGENT, AgentLink
from duplex.serving.engine.executor import RowResult, StepResult
from duplex.serving.engine.output import OutputStage
from duplex.serving.engine.planner import PlannedRow
from duplex.serving.engine.server import EngineServer
from duplex.serving.engine.session import Conversation, InputChunk
from duplex.serving.engine.validate import check_agent
from duplex.serving.metrics import EngineMetrics
from duplex.serving.ports import free_port
from duplex.serving.spec import EngineSpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import fast_spec, poll

CHUNK_MS = 200
TOOLS = ["calculator", "clock"]


@pytest.fixture(scope="module")
def model() -> Any:
    return load_part(ModelSource(), device="cpu")


@dataclass
class Engine:
    """An engine (and optionally an agent worker) on a loop thread of their own, as in real processes."""

    server: EngineServer
    addr: str
    thread: LoopThread
    worker: AgentWorker | None = None
    fed: dict[str, bytearray] = field(default_factory=dict)
    """Per session id: every text-input byte a step fed to its model."""

    def fed_text(self, session_id: str) -> bytes:
        return bytes(self.fed.get(session_id, b""))

    def agent_connected(self) -> bool:
        link = self.server.agent
        return link is not None and link.client is not None and link.client.connected.is_set()


def start_engine(model: Any, redis_url: str, prefix: str, with_worker: bool = True) -> Engine:
    lt = LoopThread()
    spec = EngineSpec(
        host="127.0.0.1",
        metrics_port=0,
        max_sessions=8,
        cohorts=2,
        tools=TOOLS,
        redis_url=redis_url,
        agent_stream_prefix=prefix,
    )

    async def up() -> Engine:
        server = EngineServer(spec, ModelSource(), model=copy.deepcopy(model), bind_port=0)
        port = await server.start()
        engine = Engine(server, f"127.0.0.1:{port}", lt)
        assert server.scheduler is not None

        def fed(conv: Conversation, tokens: tuple[int, ...]) -> None:
            engine.fed.setdefault(conv.id, bytearray()).extend(t for t in tokens if t < 256)

        server.scheduler.output.on_text_fed = fed
        if with_worker:
            wspec = fast_spec(prefix, tools=TOOLS, plugins=[])
            engine.worker = AgentWorker(wspec, redis_url, registry_for(wspec))
            server._tasks.add(asyncio.ensure_future(engine.worker.run()))
        return engine

    engine: Engine = lt.run(up())
    wait_serving(engine.addr)
    return engine


def stop_engine(engine: Engine) -> None:
    async def down() -> None:
        if engine.worker is not None:
            engine.worker.stop()
        await engine.server.stop(0.5)

    engine.thread.run(down())
    engine.thread.close()


@pytest.fixture
def prefix() -> str:
    return f"e-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def engine(model: Any, redis_server: RedisServer, prefix: str) -> Iterator[Engine]:
    e = start_engine(model, redis_server.url, prefix)
    yield e
    stop_engine(e)


def agent_request(call_id: str, tool: str, arguments: object, deadline_s: float = 0.0) -> pb.ClientEvent:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return pb.ClientEvent(agent=pb.AgentRequest(call_id=call_id, tool=tool, arguments_json=args, deadline_s=deadline_s))


@dataclass
class Talk:
    """One real-time conversation over gRPC: chunks paced like a microphone, ``pending`` client events sent
    before the next chunk, EndOfStream once ``stop_when`` holds (or after ``max_chunks``)."""

    addr: str
    session_id: str = field(default_factory=lambda: f"s-{uuid.uuid4().hex[:8]}")
    tools: list[str] = field(default_factory=lambda: list(TOOLS))
    received: list[pb.ServerEvent] = field(default_factory=list)
    pending: list[pb.ClientEvent] = field(default_factory=list)
    sent: int = 0
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""

    def agent(self, call_id: str) -> list[pb.AgentEvent]:
        return [e.agent for e in self.received if e.HasField("agent") and e.agent.job_id == call_id]

    def final(self, call_id: str) -> pb.AgentEvent | None:
        return next((a for a in self.agent(call_id) if a.state in (pb.DONE, pb.FAILED)), None)

    def states(self, call_id: str) -> list[str]:
        return [pb.AgentState.Name(a.state) for a in self.agent(call_id)]

    async def run(
        self, stop_when: Callable[[], bool], max_chunks: int = 150, on_chunk: Callable[[int], None] | None = None
    ) -> None:
        clock = SystemClock()
        chunks = split_chunks(tone(max_chunks * CHUNK_MS / 1000), 16000 * CHUNK_MS // 1000)
        ready = asyncio.Event()

        async def requests() -> AsyncIterator[pb.ClientEvent]:
            yield start_event(chunk_ms=CHUNK_MS, tools=self.tools, session_id=self.session_id)
            await ready.wait()
            t0 = clock.now_us()
            for seq, pcm in enumerate(chunks):
                if seq > 0 and stop_when():
                    break
                if on_chunk is not None:
                    on_chunk(seq)
                await clock.sleep_until(t0 + seq * CHUNK_MS * 1000)  # real-time pace, like a microphone
                while self.pending:
                    yield self.pending.pop(0)
                yield pb.ClientEvent(audio=pb.AudioChunk(seq=seq, pcm=pcm, client_time_us=clock.now_us()))
                self.sent = seq + 1
            yield pb.ClientEvent(end=pb.EndOfStream())

        async with grpc.aio.insecure_channel(self.addr) as ch:
            call = ch.stream_stream(
                "/duplex.v1.Duplex/Converse",
                request_serializer=pb.ClientEvent.SerializeToString,
                response_deserializer=pb.ServerEvent.FromString,
            )(requests())
            try:
                async for ev in call:
                    self.received.append(ev)
                    if ev.HasField("ready"):
                        ready.set()
            except grpc.aio.AioRpcError as e:
                self.code, self.details = e.code(), e.details() or ""

    def assert_audio_on_time(self) -> None:
        """Every chunk sent was answered by its own step: none lost, none substituted, none dropped."""
        assert self.code == grpc.StatusCode.OK, self.details
        audio = [e.audio for e in self.received if e.HasField("audio")]
        assert [a.seq for a in audio] == list(range(self.sent))
        assert not [a.seq for a in audio if a.timing.substituted]
        warnings = [e.warning for e in self.received if e.HasField("warning")]
        assert not warnings, warnings


async def test_client_job_runs_while_audio_flows_and_the_result_reaches_the_model(engine: Engine) -> None:
    talk = Talk(engine.addr)
    request = agent_request("c1", "calculator", {"expression": "(2 + 3) ** 2 * 4"})
    talk.pending.append(request)
    expected = result_text("c1", "calculator", "DONE", "100").encode()
    await talk.run(stop_when=lambda: expected in engine.fed_text(talk.session_id))

    assert talk.states("c1") == ["QUEUED", "RUNNING", "DONE"]
    # the QUEUED carries the arguments as the engine received them; the later events do not repeat them
    assert [a.arguments_json for a in talk.agent("c1")] == [request.agent.arguments_json, "", ""]
    done = talk.final("c1")
    assert done is not None and done.tool == "calculator" and done.detail == "100"
    assert expected in engine.fed_text(talk.session_id), "the result text reached the model's text input"
    talk.assert_audio_on_time()
    reg = engine.server.metrics.registry
    assert reg.get_sample_value("duplex_engine_agent_events_total", {"state": "DONE", "origin": "client"}) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "tools", "problem"),
    [
        ("teleport", {}, TOOLS, "unknown tool 'teleport'"),
        ("clock", {}, ["calculator"], "tool 'clock' is not granted to this session"),
        ("calculator", {"expression": "2 +"}, TOOLS, "invalid arguments for calculator"),
        ("calculator", {"expr": "1"}, TOOLS, "expression"),
        ("calculator", "[1, 2]", TOOLS, "arguments_json: must be a JSON object"),
        ("calculator", "{not json", TOOLS, "arguments_json: not valid JSON"),
        ("", {}, TOOLS, "tool: must not be empty"),
        ("calculator", {"expression": "1" * 20000}, TOOLS, "arguments_json: 20018 bytes, limit 16384"),
    ],
)
async def test_bad_calls_fail_before_any_worker_sees_them(
    engine: Engine,
    redis_server: RedisServer,
    prefix: str,
    tool: str,
    arguments: object,
    tools: list[str],
    problem: str,
) -> None:
    talk = Talk(engine.addr, tools=tools)
    request = agent_request("bad", tool, arguments)
    talk.pending.append(request)
    await talk.run(stop_when=lambda: talk.final("bad") is not None, max_chunks=25)

    assert talk.states("bad") == ["FAILED"]
    final = talk.final("bad")
    assert final is not None and problem in final.detail, final.detail
    assert final.arguments_json == request.agent.arguments_json, "the refused call's only event names its arguments"
    talk.assert_audio_on_time()
    r = Redis.from_url(redis_server.url)
    try:
        assert await r.xlen(StreamNames(prefix).jobs) == 0, "nothing was queued"
    finally:
        await r.aclose()


async def test_framing_errors_end_the_stream_with_a_status_naming_the_field(engine: Engine) -> None:
    start = start_event(chunk_ms=CHUNK_MS, tools=TOOLS)
    async with grpc.aio.insecure_channel(engine.addr) as ch:
        for event, field_name in [
            (agent_request("", "calculator", {"expression": "1"}), "agent.call_id"),
            (agent_request("m1", "calculator", {"expression": "1"}), "agent.call_id 'm1'"),
            (agent_request("c1", "calculator", {"expression": "1"}, deadline_s=-1), "agent.deadline_s"),
        ]:
            code, details = await send_raw(ch, [start, event])
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert field_name in details, details


async def test_no_redis_configured_fails_the_call(model: Any, prefix: str) -> None:
    e = start_engine(model, "", prefix, with_worker=False)
    try:
        talk = Talk(e.addr)
        talk.pending.append(agent_request("c1", "calculator", {"expression": "1 + 1"}))
        await talk.run(stop_when=lambda: talk.final("c1") is not None, max_chunks=25)
        final = talk.final("c1")
        assert final is not None and final.state == pb.FAILED and final.detail == NO_AGENT
        assert final.arguments_json == '{"expression": "1 + 1"}'
        talk.assert_audio_on_time()
    finally:
        stop_engine(e)


async def test_the_models_tool_call_text_submits_a_job(redis_server: RedisServer, prefix: str) -> None:
    """Unit level: the output stage gets a step whose text holds a call; the link submits it to Redis."""
    frame, frames = 640, 5
    metrics = EngineMetrics()
    stage = OutputStage(metrics, 16000, frame * frames, 3, wall_us=lambda mono: int(mono * 1e6))
    fed: list[int] = []
    spec = EngineSpec(tools=TOOLS, redis_url=redis_server.url, agent_stream_prefix=prefix, agent_replica_id="u-0")
    link = AgentLink(spec, metrics, lambda conv, text: fed.extend(text.encode()))
    stage.on_model_text = link.model_text
    await link.start(port=0)
    try:
        conv = Conversation("model-calls", frame * frames, frame, max_send_backlog=50, text=ByteTextDecoder(257))
        conv.chunks_in_flight = 2
        link.attach(conv, TOOLS)
        text = b'I will compute that. [[call calculator {"expression": "6 * 7"}]] one moment'
        for seq, piece in enumerate((text[:30], text[30:])):  # the call is split across two steps
            chunk = InputChunk(seq, bytes(2 * frame * frames), 0, 0.0, 0)
            row = RowResult(PlannedRow(conv, chunk, seq, False), [0] * frames, list(piece), [False] * frames)
            stage.publish(
                StepResult(
                    0, "regular", 1, (row,), torch.zeros(1, frame * frames, dtype=torch.int16), [False], 0.0, 1.0
                )
            )

        def queued() -> bool:
            return any(e.HasField("agent") and e.agent.state == pb.QUEUED for e in conv.outbox)

        await poll(queued, 10.0, "QUEUED for the model's call")
        agent = next(e.agent for e in conv.outbox if e.HasField("agent"))
        assert (agent.job_id, agent.tool) == ("m1", "calculator")
        assert agent.arguments_json == '{"expression": "6 * 7"}', "the arguments as parsed from the model's text"
        r = Redis.from_url(redis_server.url)
        try:
            entries = await r.xrange(StreamNames(prefix).jobs)
        finally:
            await r.aclose()
        assert len(entries) == 1
        job = json.loads(entries[0][1][b"data"])
        assert (job["call_id"], job["tool"], json.loads(job["arguments"])) == (
            "m1",
            "calculator",
            {"expression": "6 * 7"},
        )
    finally:
        await link.close()


class RecordingClient:
    """Stands in for ``AgentClient``: records submissions; their updates are handed to the link by the test."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, str]] = []

    async def submit(
        self, session_id: str, call_id: str, tool: str, arguments_json: str, deadline_s: float, **_: object
    ) -> None:
        self.submitted.append((call_id, tool, arguments_json))

    async def cancel_session(self, session_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_the_first_event_of_every_call_carries_its_arguments() -> None:
    """Unit level, no Redis: the link keeps each submitted call's arguments until its first event (a QUEUED the
    link itself puts before an early RUNNING included); refused calls carry theirs on their FAILED."""
    link = AgentLink(EngineSpec(tools=TOOLS), EngineMetrics(), lambda conv, text: None)
    client = RecordingClient()
    link.client = client  # type: ignore[assignment]
    conv = Conversation("first-events", 3200, 640, max_send_backlog=50, text=ByteTextDecoder(257))
    link.attach(conv, TOOLS)
    link.model_text(conv, 'x [[call clock {"tz": "UTC"}]] [[call nope]]')
    link.request(conv, check_agent(agent_request("c1", "calculator", {"expression": "1 + 1"}).agent))
    await asyncio.sleep(0)  # the submit tasks run
    assert sorted(client.submitted) == [
        ("c1", "calculator", '{"expression": "1 + 1"}'),
        ("m1", "clock", '{"tz": "UTC"}'),
    ]

    def update(call_id: str, tool: str, state: AgentState) -> AgentUpdate:
        return AgentUpdate(session_id=conv.agent_id, call_id=call_id, tool=tool, state=state)

    link.on_update(update("c1", "calculator", AgentState.QUEUED))
    link.on_update(update("c1", "calculator", AgentState.RUNNING))
    link.on_update(update("m1", "clock", AgentState.RUNNING))  # before its QUEUED: the link sends one first
    link.on_update(update("m1", "clock", AgentState.DONE))
    link.request(conv, check_agent(agent_request("c1", "clock", {"again": 1}).agent))  # a call id used again
    events = [(e.agent.job_id, pb.AgentState.Name(e.agent.state), e.agent.arguments_json) for e in conv.outbox]
    assert events == [
        ("m2", "FAILED", ""),  # broke before its arguments
        ("c1", "QUEUED", '{"expression": "1 + 1"}'),
        ("c1", "RUNNING", ""),
        ("m1", "QUEUED", '{"tz": "UTC"}'),
        ("m1", "RUNNING", ""),
        ("m1", "DONE", ""),
        ("c1", "FAILED", '{"again": 1}'),
    ]


async def test_redis_outage_keeps_audio_on_time_and_the_agent_recovers(model: Any, tmp_path: Path) -> None:
    redis = RedisServer(port=free_port(), data_dir=tmp_path / "redis")
    redis.start()
    prefix = f"o-{uuid.uuid4().hex[:8]}"
    e = start_engine(model, redis.url, prefix)
    restarting: list[asyncio.Future[None]] = []
    try:
        talk = Talk(e.addr)
        down_at, up_at = 5, 55  # chunks: Redis is away for 50 chunks = 10 s of conversation
        phase = {"after": False}

        def on_chunk(seq: int) -> None:
            if seq == 1:
                talk.pending.append(agent_request("before", "calculator", {"expression": "1 + 1"}))
            elif seq == down_at:
                redis.stop()
            elif seq == down_at + 5:
                talk.pending.append(agent_request("during", "calculator", {"expression": "2 + 2"}))
            elif seq == up_at:
                restarting.append(asyncio.ensure_future(asyncio.to_thread(redis.start)))
            elif seq > up_at and not phase["after"] and e.agent_connected() and e.worker and e.worker.ready.is_set():
                phase["after"] = True
                talk.pending.append(agent_request("after", "calculator", {"expression": "3 + 3"}))

        await talk.run(stop_when=lambda: talk.final("after") is not None, max_chunks=250, on_chunk=on_chunk)

        talk.assert_audio_on_time()
        assert talk.states("before") == ["QUEUED", "RUNNING", "DONE"]
        during = talk.final("during")
        assert during is not None and during.state == pb.FAILED and "agent unavailable" in during.detail
        after = talk.final("after")
        assert after is not None and after.state == pb.DONE and after.detail == "6", talk.states("after")
    finally:
        for f in restarting:
            await f
        stop_engine(e)
        redis.stop()
