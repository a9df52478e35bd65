"""The engine's session lifecycle (handshake → attached → parked → closed), one test per transition, on an
injected clock: a real engine (tiny model, scheduler, resume register) whose ``EngineStream`` transitions are
called directly, without a network or the step thread."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.serving.engine import validate as v
from duplex.serving.engine.agent_link import AgentLink
from duplex.serving.engine.converse import STEER_MARGIN_S, EngineStream, Refused
from duplex.serving.engine.lifecycle import Lifecycle, LifecycleError, Phase
from duplex.serving.engine.scheduler import Chunk, Scheduler
from duplex.serving.engine.server import EngineServer
from duplex.serving.engine.session import Conversation
from duplex.serving.spec import EngineSpec
from duplex.v1 import duplex_pb2 as pb

GRACE_S = 5.0


class FakeClock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[tuple[EngineServer, FakeClock]]:
    """An engine with its scheduler and agent link wired as ``start`` wires them, but no port and no step
    thread: the transitions' own effects (slots, resume register, lifecycle) are what is observed."""
    clock = FakeClock()
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=2, cohorts=1, resume_grace_s=GRACE_S)
    server = EngineServer(spec, ModelSource(), model=copy.deepcopy(tiny_model), bind_port=0, clock=clock)
    loop = asyncio.get_running_loop()
    server.scheduler = Scheduler(server.served, spec, spec.chunk_ms, server.metrics, loop, server.clock)
    server.agent = AgentLink(spec, server.metrics, lambda conv, text: None)
    yield server, clock


def start(client_time_us: int = 0, **kw: Any) -> pb.ClientEvent:
    ev = client.start_event(**kw)
    ev.start.client_time_us = client_time_us
    return ev


def attached(server: EngineServer, clock: FakeClock) -> tuple[EngineStream, Conversation, pb.SessionReady]:
    stream = EngineStream(server)
    session = stream.accept(start(), {})
    ready = stream.attach().ready
    return stream, session, ready


def test_lifecycle_moves_only_along_its_table() -> None:
    clock = FakeClock(5.0)
    life = Lifecycle(clock)
    assert (life.phase, life.since) == (Phase.HANDSHAKE, 5.0)
    with pytest.raises(LifecycleError, match="from handshake to parked"):
        life.park()
    clock.advance(1)
    life.attach()
    clock.advance(1)
    life.park()
    clock.advance(1)
    life.attach()
    clock.advance(1)
    life.close()
    life.close()  # ending an ended session again changes nothing
    with pytest.raises(LifecycleError, match="from closed to attached"):
        life.attach()
    assert life.history == [
        (5.0, Phase.HANDSHAKE),
        (6.0, Phase.ATTACHED),
        (7.0, Phase.PARKED),
        (8.0, Phase.ATTACHED),
        (9.0, Phase.CLOSED),
    ]


async def test_handshake_to_attached_holds_a_slot_and_times_the_hint(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    stream = EngineStream(server)
    session = stream.accept(start(client_time_us=123), {})
    assert session.lifecycle.phase is Phase.HANDSHAKE and not session.parked
    assert server.scheduler is not None and server.scheduler.active_count() == 1
    clock.advance(0.004)  # the engine took 4 ms between the start's arrival and the Ready
    ready = stream.attach().ready
    assert session.lifecycle.phase is Phase.ATTACHED and session.lifecycle.since == clock.t
    assert ready.start_held_us == 4000
    # the hint: chunk 0 due no sooner than STEER_MARGIN_S after the start arrived
    assert ready.send_in_us + ready.start_held_us >= round(STEER_MARGIN_S * 1e6)
    assert ready.resume_token and ready.resume_grace_ms == GRACE_S * 1000


async def test_handshake_without_client_time_gets_no_hint(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    _, _, ready = attached(server, clock)
    assert (ready.send_in_us, ready.start_held_us) == (0, 0)


async def test_handshake_refused_takes_no_slot(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    with pytest.raises(v.InputError, match="before session start") as bad:
        EngineStream(server).accept(pb.ClientEvent(audio=pb.AudioChunk(seq=0)), {})
    assert bad.value.code == grpc.StatusCode.FAILED_PRECONDITION
    attached(server, clock)
    attached(server, clock)
    stream = EngineStream(server)
    with pytest.raises(Refused, match="replica full: 2/2") as full:
        stream.accept(start(), {})
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.value.trailing == (("retry-after-ms", "1000"),)
    assert stream.session is None
    assert server.scheduler is not None and server.scheduler.active_count() == 2


async def test_attached_to_parked_when_the_stream_drops(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    stream, session, _ = attached(server, clock)
    clock.advance(0.5)
    stream.detach()  # the stream ended without the protocol's end: dropped
    assert session.lifecycle.phase is Phase.PARKED and session.parked
    assert session.lifecycle.since == clock.t
    assert server.resumes.parked_count() == 1
    assert server.scheduler is not None and server.scheduler.active_count() == 1  # the slot is kept


async def test_parked_to_attached_on_a_resume(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    stream, session, ready = attached(server, clock)
    stream.detach()
    clock.advance(GRACE_S - 0.001)
    assert server.resumes.sweep() == 0  # still within the grace
    again = EngineStream(server)
    ev = pb.ClientEvent(start=pb.SessionStart(resume_token=ready.resume_token, resume_events_seen=0))
    assert again.accept(ev, {}) is session
    assert session.lifecycle.phase is Phase.ATTACHED and session.lifecycle.since == clock.t
    out = again.attach().ready
    assert out.resumed and out.session_id == ready.session_id and out.send_in_us == 0
    assert server.resumes.parked_count() == 0


async def test_parked_to_closed_past_the_grace(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    stream, session, ready = attached(server, clock)
    stream.detach()
    clock.advance(GRACE_S)
    assert server.resumes.sweep() == 1
    assert session.lifecycle.phase is Phase.CLOSED and session.lifecycle.since == clock.t
    assert server.scheduler is not None and server.scheduler.active_count() == 0
    ev = pb.ClientEvent(start=pb.SessionStart(resume_token=ready.resume_token))
    with pytest.raises(v.InputError, match="expired") as gone:
        EngineStream(server).accept(ev, {})
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_attached_to_closed_when_the_session_finishes(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    stream, session, _ = attached(server, clock)
    session.outbox.append(pb.ServerEvent(warning=pb.Warning(code="X")))
    session.finished = True
    assert [e.warning.code async for e in stream.events()] == ["X"]
    assert not stream.dropped
    clock.advance(1)
    stream.detach()
    assert session.lifecycle.phase is Phase.CLOSED and session.lifecycle.since == clock.t
    assert server.resumes.parked_count() == 0
    assert server.scheduler is not None and server.scheduler.active_count() == 0


async def test_a_dropped_no_resume_session_closes(engine: tuple[EngineServer, FakeClock]) -> None:
    server, _ = engine
    stream = EngineStream(server)
    session = stream.accept(start(no_resume=True), {})
    assert stream.attach().ready.resume_token == ""
    stream.detach()
    assert session.lifecycle.phase is Phase.CLOSED and server.resumes.parked_count() == 0


async def test_received_chunks_are_stamped_on_the_engine_clock(engine: tuple[EngineServer, FakeClock]) -> None:
    server, clock = engine
    _, session, _ = attached(server, clock)
    clock.advance(0.25)
    pcm = np.zeros(session.chunk_samples, "<i2").tobytes()
    assert await server._read_audio(client.audio_event(0, pcm, 77), session, False)
    assert server.scheduler is not None
    msgs = []
    while not server.scheduler.inbox.empty():
        msgs.append(server.scheduler.inbox.get_nowait())
    (chunk,) = [m.chunk for m in msgs if isinstance(m, Chunk)]
    assert (chunk.seq, chunk.client_time_us, chunk.recv_mono) == (0, 77, clock.t)
    assert chunk.recv_wall_us == server.scheduler.wall_us(clock.t)
