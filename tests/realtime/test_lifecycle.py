"""The Realtime session's lifecycle (open → starting → live → closed), one test per transition, each time read
from a clock the test steps: a session on a real engine (the module's ``rt``, its conversations run in-process
as the endpoint runs them), with a scripted WebSocket in place of the client's socket."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from aiohttp import WSMsgType
from prometheus_client import CollectorRegistry

from duplex.serving.realtime.lifecycle import Lifecycle, LifecycleError, Phase
from duplex.serving.realtime.metrics import RealtimeMetrics
from duplex.serving.realtime.protocol import SessionSettings
from duplex.serving.realtime.session import RealtimeSession

from .conftest import WIRE_RATE, RealtimeStack


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Message:
    def __init__(self, data: str) -> None:
        self.type, self.data = WSMsgType.TEXT, data


class ScriptedSocket:
    """Stands in for the client's WebSocket: frames the test pushes, events the session writes."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.closed = False
        self.close_code: int | None = None

    def push(self, event: dict[str, Any]) -> None:
        self.inbox.put_nowait(Message(json.dumps(event)))

    def hang_up(self) -> None:
        self.inbox.put_nowait(None)

    def __aiter__(self) -> ScriptedSocket:
        return self

    async def __anext__(self) -> Message:
        msg = await self.inbox.get()
        if msg is None or self.closed:
            raise StopAsyncIteration
        return msg

    async def send_str(self, data: str) -> None:
        self.events.append(json.loads(data))
        self.changed.set()

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        self.closed, self.close_code = True, code
        self.inbox.put_nowait(None)
        self.changed.set()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def until(self, done: Callable[[], bool], deadline_s: float = 30.0) -> None:
        async def wait() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), deadline_s)


def audio(ms: int) -> dict[str, Any]:
    pcm = bytes(2 * WIRE_RATE * ms // 1000)
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


Scenario = Callable[[RealtimeSession, ScriptedSocket, FakeClock], Awaitable[None]]


def run(rt: RealtimeStack, scenario: Scenario, settings: SessionSettings | None = None) -> RealtimeSession:
    """Run a session on the engine's loop while ``scenario`` drives it; the session once it is over."""

    async def main() -> RealtimeSession:
        ws, clock = ScriptedSocket(), FakeClock()
        metrics = RealtimeMetrics(CollectorRegistry())
        session = RealtimeSession(
            ws,  # type: ignore[arg-type]
            rt.engine,
            metrics,
            settings or SessionSettings(),
            False,
            {},
            clock=clock,
        )
        served = asyncio.create_task(session.run())
        await scenario(session, ws, clock)
        await asyncio.wait_for(served, 30)
        return session

    session: RealtimeSession = rt.thread.run(main(), timeout=60)
    return session


def test_a_refused_transition_names_both_phases() -> None:
    life = Lifecycle(FakeClock())
    with pytest.raises(LifecycleError, match="from open to live"):
        life.live()
    life.start()
    with pytest.raises(LifecycleError, match="from starting to starting"):
        life.start()
    life.close()
    life.close()  # closing again changes nothing
    assert [p for _, p in life.history] == [Phase.OPEN, Phase.STARTING, Phase.CLOSED]


def test_open_allows_session_update_and_closes_without_a_conversation(rt: RealtimeStack) -> None:
    async def scenario(s: RealtimeSession, ws: ScriptedSocket, clock: FakeClock) -> None:
        await ws.until(lambda: "session.created" in ws.types())
        assert s.phase is Phase.OPEN and s.lifecycle.since == 100.0
        ws.push({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
        await ws.until(lambda: "session.updated" in ws.types())
        assert s.settings.instructions == "Be brief."
        clock.now = 103.0
        ws.hang_up()

    s = run(rt, scenario)
    assert s.lifecycle.history == [(100.0, Phase.OPEN), (103.0, Phase.CLOSED)]  # OPEN → CLOSED, nothing started


def test_open_to_starting_to_live_then_closed_by_the_client(rt: RealtimeStack) -> None:
    async def scenario(s: RealtimeSession, ws: ScriptedSocket, clock: FakeClock) -> None:
        await ws.until(lambda: "session.created" in ws.types())
        clock.now = 101.0  # (the engine answers in its own time: the clock stays until LIVE was entered)
        ws.push(audio(300))  # the conversation starts with the first audio: OPEN → STARTING
        await ws.until(lambda: "input_audio_buffer.speech_started" in ws.types())  # SessionReady: → LIVE
        assert s.lifecycle.history == [(100.0, Phase.OPEN), (101.0, Phase.STARTING), (101.0, Phase.LIVE)]
        ws.push({"type": "session.update", "session": {"type": "realtime", "instructions": "Too late."}})
        await ws.until(lambda: "error" in ws.types())
        assert ws.events[-1]["error"]["param"] == "session.instructions"  # fixed once started
        clock.now = 104.0
        ws.hang_up()  # LIVE → CLOSED

    s = run(rt, scenario)
    assert s.lifecycle.history[2:] == [(101.0, Phase.LIVE), (104.0, Phase.CLOSED)]


def test_starting_to_closed_when_the_engine_refuses_the_start(rt: RealtimeStack) -> None:
    async def scenario(s: RealtimeSession, ws: ScriptedSocket, clock: FakeClock) -> None:
        await ws.until(lambda: "session.created" in ws.types())
        clock.now = 101.0
        ws.push(audio(100))
        await ws.until(lambda: ws.closed)

    # a voice the tiny model's family does not take: the engine refuses the SessionStart
    s = run(rt, scenario, SessionSettings(voice="NATF0"))
    ws = s.ws
    assert isinstance(ws, ScriptedSocket)
    assert [p for _, p in s.lifecycle.history] == [Phase.OPEN, Phase.STARTING, Phase.CLOSED]
    assert s.lifecycle.history[-1] == (101.0, Phase.CLOSED)
    error = ws.events[-1]["error"]
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.name.lower() and "start.voice" in error["message"]
    assert ws.close_code == 1008


def test_live_to_closed_when_the_engine_ends_the_conversation(rt: RealtimeStack) -> None:
    text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a" * 4000}]}

    async def scenario(s: RealtimeSession, ws: ScriptedSocket, clock: FakeClock) -> None:
        ws.push(audio(300))
        await ws.until(lambda: "input_audio_buffer.speech_started" in ws.types())
        assert s.phase is Phase.LIVE
        clock.now = 105.0
        for _ in range(5):  # 20,000 bytes of typed text at once: more than the engine lets wait (16,384)
            ws.push({"type": "conversation.item.create", "item": text})
        await ws.until(lambda: ws.closed)

    s = run(rt, scenario)
    ws = s.ws
    assert isinstance(ws, ScriptedSocket)
    assert s.lifecycle.history[-2:] == [(100.0, Phase.LIVE), (105.0, Phase.CLOSED)]
    error = ws.events[-1]["error"]
    assert error["code"] == "resource_exhausted" and "text.text" in error["message"]
    assert ws.close_code == 1013
