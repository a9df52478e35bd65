"""Real servers on loopback for the serving tests: an engine and a gateway in a background thread with
their own event loop (as in a real process), reached over real gRPC. Readiness is awaited through the
gateway's health service with a deadline — never a sleep."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.model.audio_io import read_wav
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource
from duplex.serving.engine.server import EngineServer
from duplex.serving.gateway.auth import KeyRing
from duplex.serving.gateway.server import GatewayServer
from duplex.serving.spec import EngineSpec, GatewaySpec

API_KEY = "test-key-1"


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Stack:
    engine: EngineServer
    gateway: GatewayServer
    engine_addr: str
    gateway_addr: str
    thread: LoopThread

    def placed(self) -> int:
        assert self.engine.scheduler is not None
        return self.engine.scheduler.placed_count()

    def active(self) -> int:
        assert self.engine.scheduler is not None
        return self.engine.scheduler.active_count()


def wait_serving(addr: str, deadline_s: float = 30.0, ca: Path | None = None) -> None:
    """Poll the health service until SERVING (over TLS verified against ``ca`` when given)."""
    end = time.monotonic() + deadline_s
    channel = (
        grpc.insecure_channel(addr)
        if ca is None
        else grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
    )
    with channel as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{addr} not SERVING within {deadline_s} s")
            time.sleep(0.05)


def start_stack(engine_spec: EngineSpec, keys: KeyRing, model: Any) -> Stack:
    lt = LoopThread()

    async def up() -> Stack:
        engine = EngineServer(engine_spec, ModelSource(), model=model, bind_port=0)
        eport = await engine.start()
        gspec = GatewaySpec(
            host="127.0.0.1", metrics_port=0, engines=[f"127.0.0.1:{eport}"], health_interval_s=0.2, drain_grace_s=5.0
        )
        gateway = GatewayServer(gspec, keys=keys, bind_port=0)
        gport = await gateway.start()
        return Stack(engine, gateway, f"127.0.0.1:{eport}", f"127.0.0.1:{gport}", lt)

    stack: Stack = lt.run(up())
    wait_serving(stack.gateway_addr)
    return stack


def stop_stack(stack: Stack) -> None:
    async def down() -> None:
        await stack.gateway.stop(0.5)
        await stack.engine.stop(0.5)

    stack.thread.run(down())
    stack.thread.close()


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    return load_part(ModelSource(), device="cpu")


@pytest.fixture(scope="session")
def stack(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keyfile = Path(tmp_path_factory.mktemp("keys")) / "keys"
    keyfile.write_text(f"# test keys\n{API_KEY}\nother-key\n")
    # a short resume grace: a client that vanishes keeps its slot only this long (tests/serving/test_resume.py
    # tests resumption itself, on an injected clock)
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=64, max_send_backlog=20, resume_grace_s=1.0)
    s = start_stack(spec, KeyRing.from_file(str(keyfile)), tiny_model)
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def small_stack(tiny_model: Any) -> Iterator[Stack]:
    """A replica with 2 slots (admission tests)."""
    import copy

    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=2, cohorts=2)
    s = start_stack(spec, KeyRing(set(), open_access=True), copy.deepcopy(tiny_model))
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def one_cohort_stack(tiny_model: Any) -> Iterator[Stack]:
    """A replica with a single cohort, so every session shares one step clock. Chunk loss is judged by the
    steps of a session's own cohort; with one cohort a stalled session is certain to share it with the
    session it is compared against (with four, the two may land in different cohorts)."""
    import copy

    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=8, cohorts=1, max_send_backlog=20)
    s = start_stack(spec, KeyRing({API_KEY}, open_access=False), copy.deepcopy(tiny_model))
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A spoken question (espeak-ng, real TTS) and then 3 s of silence, so the model takes the turn and speaks."""
    raw = tmp_path_factory.mktemp("speech") / "q.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-w", str(raw), "Hello, could you tell me what time it is?"], check=True
    )
    said = read_wav(raw, 16000, mono=True).samples
    return np.concatenate([said, np.zeros(3 * 16000, np.int16)])


def tone(seconds: float, hz: float = 220.0, amp: float = 0.3, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (np.sin(2 * np.pi * hz * t) * amp * 32767).astype(np.int16)


AUTH = (("authorization", f"Bearer {API_KEY}"),)
