"""Barge-in on the page, in a real browser: the user starts speaking while the model talks, and the page cuts
the model's playback at once.

The tiny model cannot be made to yield on demand (tests/realtime/test_translation.py says the same), so the
one scripted part is the engine's floor decision: a ``Converse`` servicer that talks from the first chunk (a
tone, ``FLOOR_SPEAK``) and, at the first loud input chunk, yields as the engine does (``FLOOR_YIELD`` in that
chunk, then ``USER_BARGE_IN`` with the truncation point) and is silent from then on, in place of the engine's
session path (``open_conversation``). Everything between it and the browser is real: the engine's Realtime
endpoint (the translation into ``response.done`` cancelled and ``speech_started``), the session picker (which
places the WebSocket and serves the page), Envoy in front of both, Debian's Chromium with a WAV as its
microphone — 1.5 s of silence, then espeak-ng speech — and the page's own capture and playback. The page
exposes each cut in ``window.duplexStats.cuts``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from playwright.sync_api import sync_playwright
from prometheus_client import CollectorRegistry
from serving.conftest import LoopThread
from serving.envoy_child import EnvoyChild

from duplex.model.audio_io import read_wav, write_wav
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.picker.server import PickerServer
from duplex.serving.realtime.endpoint import RealtimeEndpoint
from duplex.serving.spec import GatewaySpec
from duplex.v1 import duplex_pb2 as pb
from duplex.v1 import duplex_pb2_grpc as pb_grpc

from .test_page import CHROMIUM, WAV_RATE, browser_args

RATE, CHUNK_MS, FRAME_MS = 16000, 200, 40
CHUNK = RATE * CHUNK_MS // 1000
FRAMES = CHUNK_MS // FRAME_MS
LOUD_RMS = 300.0
"""Input louder than this (PCM16 RMS of a chunk) is the user speaking; the WAV's silence is exact zeros."""
SILENCE_S = 1.5
CUT_DEADLINE_MS = 60_000  # the page's first cut, on a shared 2-core machine (a deadline, not a figure)


class YieldingEngine(pb_grpc.ReplicaServicer):
    """Speaks from the first chunk until the user's first loud chunk, then yields and stays silent. It reports
    its load over gRPC (for the picker) and runs conversations for its Realtime endpoint
    (``realtime.host.ConversationHost``)."""

    model_name = "scripted"
    draining = False
    continues_after_input = False
    session_sampling = False

    def __init__(self) -> None:
        self.sessions = 0
        self.barge_ins = 0
        self.http_port = 0

    async def GetLoad(self, request: pb.LoadRequest, context: Any) -> pb.ReplicaLoad:
        return pb.ReplicaLoad(
            active_sessions=self.sessions, capacity=4, model="scripted", chunk_ms=CHUNK_MS, http_port=self.http_port
        )

    async def open_conversation(
        self, first: pb.ClientEvent, rest: AsyncIterator[pb.ClientEvent], metadata: dict[str, str]
    ) -> AsyncGenerator[pb.ServerEvent, None]:
        async def events() -> AsyncIterator[pb.ClientEvent]:
            yield first
            async for ev in rest:
                yield ev

        async for out in self.converse(events()):
            yield out

    async def converse(self, requests: AsyncIterator[pb.ClientEvent]) -> AsyncIterator[pb.ServerEvent]:
        fmt = pb.AudioFormat(sample_rate=RATE, channels=1, encoding=pb.PCM16_LE)
        voice = (np.sin(2 * np.pi * 440 * np.arange(CHUNK) / RATE) * 8000).astype("<i2").tobytes()
        speaking = True
        self.sessions += 1
        try:
            async for ev in requests:
                if ev.HasField("start"):
                    yield pb.ServerEvent(
                        ready=pb.SessionReady(
                            session_id="s1",
                            model="scripted",
                            input_format=fmt,
                            output_format=fmt,
                            chunk_ms=CHUNK_MS,
                            frame_ms=FRAME_MS,
                            chunk_samples=CHUNK,
                        )
                    )
                elif ev.HasField("audio"):
                    seq = ev.audio.seq
                    x = np.frombuffer(ev.audio.pcm, "<i2").astype(np.float64)
                    loud = bool(len(x)) and float(np.sqrt(np.mean(x**2))) > LOUD_RMS
                    at = seq * CHUNK
                    if speaking and loud:  # the user barges in: yield after this chunk's first frame
                        speaking = False
                        self.barge_ins += 1
                        controls = [pb.FLOOR_SPEAK, pb.FLOOR_YIELD] + [pb.FLOOR_LISTEN] * (FRAMES - 2)
                        yield self.audio(seq, voice, controls)
                        turn = pb.TurnEvent(
                            seq=seq,
                            type=pb.USER_BARGE_IN,
                            frame=1,
                            output_sample=at + RATE * FRAME_MS // 1000,
                            truncated_at_sample=at,
                        )
                        yield pb.ServerEvent(turn=turn)
                    elif speaking:
                        yield self.audio(seq, voice, [pb.FLOOR_SPEAK] * FRAMES)
                        if seq == 0:  # as the engine: the turn-start event follows its chunk's audio
                            yield pb.ServerEvent(turn=pb.TurnEvent(seq=0, type=pb.MODEL_TURN_START))
                    else:
                        yield self.audio(seq, b"", [pb.FLOOR_LISTEN] * FRAMES)
                elif ev.HasField("end"):
                    return
        finally:
            self.sessions -= 1

    @staticmethod
    def audio(seq: int, pcm: bytes, controls: list[int]) -> pb.ServerEvent:
        return pb.ServerEvent(
            audio=pb.ModelAudio(seq=seq, pcm=pcm, samples=CHUNK, output_sample=seq * CHUNK, control=controls)
        )


@dataclass
class Stack:
    engine: YieldingEngine
    page_url: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    lt = LoopThread()
    engine = YieldingEngine()
    endpoint = RealtimeEndpoint(engine, CollectorRegistry(), 1 << 20)

    async def up() -> tuple[grpc.aio.Server, PickerServer]:
        server = grpc.aio.server()
        pb_grpc.add_ReplicaServicer_to_server(engine, server)
        checks = health.aio.HealthServicer()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        engine.http_port = await endpoint.start("127.0.0.1", 0)
        spec = GatewaySpec(
            host="127.0.0.1", metrics_port=0, engines=[f"127.0.0.1:{port}"], open_access=True, health_interval_s=0.2
        )
        picker = PickerServer(spec, http_bind_port=0)
        await picker.start()

        async def reported() -> None:  # the picker knows the engine's WebSocket port
            while not all(r.healthy and r.http_port for r in picker.picker.router.replicas):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(reported(), 30)
        return server, picker

    server, picker = lt.run(up(), timeout=60)
    envoy = None
    try:
        cfg = EnvoyConfig(
            picker=f"127.0.0.1:{picker.port}", eds_path=Path("x"), port=0, realtime=f"127.0.0.1:{picker.http_port}"
        )
        grpc_addr = f"127.0.0.1:{picker.spec.engines[0].rpartition(':')[2]}"
        envoy = EnvoyChild(cfg, [grpc_addr], [f"127.0.0.1:{engine.http_port}"])
        envoy.start()
        yield Stack(engine, f"http://127.0.0.1:{envoy.realtime_port}/")
    finally:
        if envoy is not None:
            envoy.stop()

        async def down() -> None:
            await endpoint.stop()
            await picker.stop(0.5)
            await server.stop(0.5)

        lt.run(down())
        lt.close()


@pytest.fixture(scope="module")
def interrupting_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's microphone: 1.5 s of silence (the model talks alone), then the user speaks over it."""
    d = tmp_path_factory.mktemp("mic")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "Wait, stop, I have a question."], check=True)
    said = read_wav(raw, WAV_RATE, mono=True).samples
    path = d / "interrupt.wav"
    silence = np.zeros(int(SILENCE_S * WAV_RATE), np.int16)
    write_wav(path, np.concatenate([silence, said, np.zeros(3 * WAV_RATE, np.int16)]), WAV_RATE)
    return path


def test_speaking_over_the_model_cuts_its_playback(stack: Stack, interrupting_wav: Path) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(interrupting_wav))
        try:
            page = browser.new_page()
            page.goto(stack.page_url)
            page.click("#start")
            page.wait_for_function("() => window.duplexStats.cuts.length > 0", timeout=CUT_DEADLINE_MS, polling=100)
            stats: dict[str, Any] = page.evaluate("() => JSON.parse(JSON.stringify(window.duplexStats))")
            assert stack.engine.barge_ins == 1
            assert stats["errors"] == []
            cut = stats["cuts"][0]
            # the model had been heard talking, and what was scheduled but not yet heard was dropped
            assert cut["played_s"] > 0.2 and cut["dropped_s"] > 0, cut
            assert cut["reason"] in ("response cancelled", "barge-in"), cut
            assert [t["status"] for t in stats["turns"]] == ["cancelled"]
            assert cut["at_s"] > stats["turns"][0]["first_audio_s"]  # cut while the model was being heard
            log = page.locator("#events").inner_text()
            assert "playback cut" in log

            # Nothing more is played: wait for ten more server events (the silent model's chunks) and compare.
            seen = stats["events"]
            page.wait_for_function(f"() => window.duplexStats.events >= {seen + 10}", timeout=30_000, polling=100)
            later: dict[str, Any] = page.evaluate("() => JSON.parse(JSON.stringify(window.duplexStats))")
            assert later["samplesPlayed"] / 24000 == pytest.approx(cut["played_s"], abs=1e-6)
            assert len(later["cuts"]) == 1 and later["errors"] == []
        finally:
            browser.close()
