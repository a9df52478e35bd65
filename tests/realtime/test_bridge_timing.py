"""The endpoint's own work per audio chunk, ``duplex_engine_realtime_bridge_seconds{direction}``, measured on
an injected clock: exactly, for a session fed engine events directly, and per chunk through a real engine's
endpoint (every chunk sent after ``SessionReady`` is observed once on the way in, every model audio chunk once on
the way out, each as a difference of the injected clock's readings)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
from prometheus_client import CollectorRegistry

from duplex.serving.realtime.metrics import RealtimeMetrics
from duplex.serving.realtime.protocol import SessionSettings
from duplex.serving.realtime.session import RealtimeSession

from .conftest import WIRE_RATE, RealtimeStack
from .test_translation import LISTEN, SPEAK, audio, ready

METRIC = "duplex_engine_realtime_bridge_seconds"
TICK_S = 0.001


class TickClock:
    """Monotonic seconds that advance by ``TICK_S`` at every reading: an observation made of one start and one
    end reading with no other reading between them is exactly one tick."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.reads * TICK_S


def bridge(registry: CollectorRegistry, direction: str, suffix: str, **labels: str) -> float:
    value = registry.get_sample_value(f"{METRIC}_{suffix}", {"direction": direction, **labels})
    return value if value is not None else 0.0


class Socket:
    """Stands in for the WebSocket: records what the session writes."""

    closed = False

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_str(self, data: str) -> None:
        self.events.append(json.loads(data))


async def test_egress_is_timed_from_the_session_to_the_written_frames() -> None:
    registry = CollectorRegistry()
    sink, clock = Socket(), TickClock()
    s = RealtimeSession(
        sink,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # no conversation is opened: the engine's events are fed directly
        RealtimeMetrics(registry),
        SessionSettings(),
        False,
        {},
        lambda: 0,
        bridge_clock=clock,
    )
    s.lifecycle.start()  # as if the SessionStart had gone to the engine
    await s.on_server_event(ready())
    assert bridge(registry, "egress", "count") == 0  # only model audio is timed
    reads = clock.reads
    await s.on_server_event(audio(0, [LISTEN] * 5, loud=False))
    await s.on_server_event(audio(1, [SPEAK] * 5, loud=True))
    # two readings per chunk (a silent one writes no frame, a spoken one opens a response), the second after
    # the frames were written
    assert clock.reads - reads == 4
    assert sink.events[-1]["type"] == "response.output_audio.delta"  # the model's turn opened and its audio sent
    assert bridge(registry, "egress", "count") == 2
    assert bridge(registry, "egress", "sum") == 2 * TICK_S
    assert bridge(registry, "ingress", "count") == 0


async def until(done: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Poll ``done`` (state another thread updates) until it holds, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not done():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_each_chunk_is_timed_once_each_way_through_the_engine(rt: RealtimeStack) -> None:
    assert rt.engine.realtime is not None
    registry = rt.engine.metrics.registry
    kinds = [(d, k) for d in ("ingress", "egress") for k in ("count", "sum")]
    before = {(d, k): bridge(registry, d, k) for d, k in kinds}
    below_one_tick = {d: bridge(registry, d, "bucket", le="0.00075") for d in ("ingress", "egress")}
    clock = TickClock()
    rt.engine.realtime.bridge_clock = clock  # sessions opened from now on read it
    n, piece = 6, WIRE_RATE * 200 // 1000
    tone = (np.sin(np.arange(n * piece) * 0.05) * 3000).astype("<i2")
    seen: set[int] = set()
    url = f"ws://127.0.0.1:{rt.http_port}/v1/realtime?duplex_events=1"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url) as ws,
        ):
            for k in range(n):
                # one 200 ms piece completes one chunk; piece 0 waits for SessionReady (setup: not timed)
                pcm = base64.b64encode(tone[k * piece : (k + 1) * piece].tobytes()).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
                while k not in seen:  # the next piece once this chunk's output is back
                    msg = await ws.receive(timeout=30)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    event = json.loads(msg.data)
                    assert event["type"] != "error", event
                    if event["type"] == "duplex.chunk":
                        seen.add(event["seq"])
    finally:
        rt.engine.realtime.bridge_clock = time.perf_counter

    def observed(direction: str) -> float:
        return bridge(registry, direction, "count") - before[direction, "count"]

    # the last egress observation is made right after its frames were written: wait for it
    await until(lambda: observed("egress") >= n)
    assert observed("ingress") == n - 1
    assert observed("egress") == n
    # each observation is a difference of the injected clock's readings: a whole number of ticks, at least one
    for direction in ("ingress", "egress"):
        ticks = (bridge(registry, direction, "sum") - before[direction, "sum"]) / TICK_S
        assert abs(ticks - round(ticks)) < 1e-6 and round(ticks) >= observed(direction), (direction, ticks)
        assert bridge(registry, direction, "bucket", le="0.00075") == below_one_tick[direction]
