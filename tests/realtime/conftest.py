"""A real engine serving the Realtime endpoint on loopback (as tests/serving/conftest.py starts it), reached
directly, as Envoy reaches it once the session picker allowed the upgrade (tests/realtime/test_front.py goes
through the real Envoy and picker); the spoken-question fixture at the wire rate."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from serving.conftest import LoopThread, wait_serving

from duplex.model.audio_io import read_wav
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource
from duplex.serving.engine.server import EngineServer
from duplex.serving.spec import EngineSpec

API_KEY = "rt-key-1"
WIRE_RATE = 24000
MAX_FRAME = 128 * 1024
"""The test engine's ``max_message_bytes`` (largest WebSocket frame)."""

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
"""The official SDK's GA server-event union: every event we receive must validate against it."""


@dataclass
class RealtimeStack:
    engine: EngineServer
    http_port: int
    thread: LoopThread

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/v1"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"


def start_realtime(source: ModelSource, model: Any = None, **engine: Any) -> RealtimeStack:
    """An engine serving ``source`` (or ``model``) with its Realtime endpoint on a free port."""
    lt = LoopThread()

    async def up() -> RealtimeStack:
        espec = EngineSpec(
            host="127.0.0.1",
            metrics_port=0,
            max_sessions=16,
            max_send_backlog=50,
            max_message_bytes=MAX_FRAME,
            **engine,
        )
        engine_server = EngineServer(espec, source, model=model, bind_port=0, http_bind_port=0)
        await engine_server.start()
        return RealtimeStack(engine_server, engine_server.http_port, lt)

    stack: RealtimeStack = lt.run(up(), timeout=120)
    wait_serving(f"127.0.0.1:{stack.engine.port}")
    return stack


def stop_realtime(stack: RealtimeStack) -> None:
    stack.thread.run(stack.engine.stop(0.5))
    stack.thread.close()


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeStack]:
    stack = start_realtime(ModelSource(), load_part(ModelSource(), device="cpu"))
    yield stack
    stop_realtime(stack)


@pytest.fixture(scope="session")
def speech24(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A spoken question (espeak-ng) at 24 kHz, then 3 s of silence so the model takes the turn."""
    raw = Path(tmp_path_factory.mktemp("speech")) / "q.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-w", str(raw), "Hello, could you tell me what time it is?"], check=True
    )
    said = read_wav(raw, WIRE_RATE, mono=True).samples
    return np.concatenate([said, np.zeros(3 * WIRE_RATE, np.int16)])


@dataclass
class Received:
    """What a client saw: every event (validated against the SDK's types) and how the socket closed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait(self, done: Any, deadline_s: float = 30.0) -> None:
        """Until ``done(self)`` holds (checked on every event), or fail at the deadline."""

        async def until() -> None:
            while not done(self):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), deadline_s)


async def collect(conn: Any, into: Received, extensions: bool = False) -> None:
    """Read every event of an SDK connection until it closes; record the close code. Every event is validated
    against the SDK's types, but, with ``extensions``, the ``duplex.*`` ones (which it has none for)."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            raw = await conn.recv_bytes()
            event = json.loads(raw)
            if not (extensions and event["type"].startswith("duplex.")):
                SERVER_EVENT.validate_python(event)
            into.events.append(event)
            into.changed.set()
    except ConnectionClosed as e:
        into.close_code = e.rcvd.code if e.rcvd is not None else None
        into.changed.set()


async def stream_live(conn: Any, samples: np.ndarray, piece_ms: int = 100) -> None:
    """Append ``samples`` as a microphone would: piece k (``piece_ms`` of audio) at capture start + (k+1)·piece_ms."""
    step = WIRE_RATE * piece_ms // 1000
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k in range(len(samples) // step):
        delay = t0 + (k + 1) * piece_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the capture schedule itself, not a wait for the server
        pcm = samples[k * step : (k + 1) * step].astype("<i2").tobytes()
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())


def rms(b64_deltas: list[str]) -> float:
    pcm = np.frombuffer(b"".join(base64.b64decode(d) for d in b64_deltas), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0


def bearer(key: str) -> dict[str, Any]:
    """``websockets.connect`` arguments that offer ``key`` as ``Authorization: Bearer``."""
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


async def start_conversation(url: str, key: str) -> tuple[Any, dict[str, Any]]:
    """A WebSocket to ``url`` whose conversation started: its ``duplex.session.ready`` (naming the engine)."""
    ws = await websockets.connect(f"{url}?duplex_events=1", **bearer(key))
    silence = "A" * (WIRE_RATE * 2 * 200 // 1000 * 4 // 3)  # 200 ms of digital silence, base64
    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
    while (event := json.loads(await ws.recv()))["type"] != "duplex.session.ready":
        assert event["type"] != "error", event
    return ws, event
