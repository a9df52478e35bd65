"""Real servers on loopback for the serving tests, as ``duplex up`` runs them: an engine and the session
picker in a background thread with their own event loop (as in a real process), and the real Envoy binary in
front of them (started from a spawned child, ``envoy_child.py``). Every conversation of a stack goes through
Envoy, which asks the picker once per stream (key, quotas, engine). Readiness is awaited with deadlines —
never a sleep: the picker's health service (SERVING once it saw the engine answer), then Envoy's admin API."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from duplex.serving.envoy.cli import envoy_config
from duplex.serving.picker.auth import key_line
from duplex.serving.picker.server import PickerServer
from duplex.serving.spec import EngineSpec, GatewaySpec

from .envoy_child import EnvoyChild

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
    picker: PickerServer
    envoy: EnvoyChild
    engine_addr: str
    """The engine's own gRPC address (tests that check what the engine does without the front door)."""
    thread: LoopThread
    dir: Path
    """Private files of the stack (the keys file)."""

    @property
    def front_addr(self) -> str:
        """Envoy's listener: the only address clients of ``duplex up`` are given."""
        return f"127.0.0.1:{self.envoy.port}"

    def placed(self) -> int:
        assert self.engine.scheduler is not None
        return self.engine.scheduler.placed_count()

    def active(self) -> int:
        assert self.engine.scheduler is not None
        return self.engine.scheduler.active_count()

    def poll_load(self) -> None:
        """Have the picker read the engine's load report now rather than at its next poll."""
        self.thread.run(self.picker.picker.router.poll_once())


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


def start_stack(
    engine_spec: EngineSpec,
    model: Any,
    keys: Iterable[str] | Mapping[str, str] = (),
    clock: Callable[[], float] = time.monotonic,
    **front: Any,
) -> Stack:
    """The engine serving ``model`` (on ``clock``), the picker and Envoy. ``keys``: the API keys accepted,
    written hashed to a keys file — a mapping names them (name → key), else each is ``key-N`` in sorted order;
    none = open access. ``front``: further ``GatewaySpec`` fields of the picker and Envoy (quotas, TLS files,
    ``health_interval_s``)."""
    lt = LoopThread()
    private = Path(tempfile.mkdtemp(prefix="duplex-stack-"))
    named = dict(keys) if isinstance(keys, Mapping) else {f"key-{i}": k for i, k in enumerate(sorted(keys))}
    keyfile = private / "keys"
    keyfile.write_text("".join(f"{key_line(k, name)}\n" for name, k in named.items()))
    settings: dict[str, Any] = {"api_keys_file": str(keyfile)} if named else {"open_access": True}
    settings = {"health_interval_s": 0.2, "max_message_bytes": engine_spec.max_message_bytes, **settings, **front}

    async def up() -> tuple[EngineServer, PickerServer]:
        engine = EngineServer(engine_spec, ModelSource(), model=model, bind_port=0, clock=clock)
        eport = await engine.start()
        spec = GatewaySpec(host="127.0.0.1", metrics_port=0, engines=[f"127.0.0.1:{eport}"], **settings)
        picker = PickerServer(spec)
        await picker.start()
        return engine, picker

    engine, picker = lt.run(up(), timeout=120)
    cfg = envoy_config(picker.spec, f"127.0.0.1:{picker.port}", private / "engines.json", port=0)
    envoy = EnvoyChild(cfg, list(picker.spec.engines), [])
    stack = Stack(engine, picker, envoy, picker.spec.engines[0], lt, private)
    try:
        wait_serving(f"127.0.0.1:{picker.port}")  # SERVING once the picker saw the engine answer
        envoy.start()  # returns once its listener is bound and it is ready
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    stack.envoy.stop()

    async def down() -> None:
        await stack.picker.stop(0.5)
        await stack.engine.stop(0.5)

    stack.thread.run(down())
    stack.thread.close()
    shutil.rmtree(stack.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    return load_part(ModelSource(), device="cpu")


@pytest.fixture(scope="session")
def stack(tiny_model: Any) -> Iterator[Stack]:
    # a short resume grace: a client that vanishes keeps its slot only this long (tests/serving/test_resume.py
    # tests resumption itself, on an injected clock)
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=64, max_send_backlog=20, resume_grace_s=1.0)
    s = start_stack(spec, tiny_model, keys=[API_KEY, "other-key"])
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def small_stack(tiny_model: Any) -> Iterator[Stack]:
    """A replica with 2 slots (admission tests)."""
    import copy

    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=2, cohorts=2)
    s = start_stack(spec, copy.deepcopy(tiny_model))
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def one_cohort_stack(tiny_model: Any) -> Iterator[Stack]:
    """A replica with a single cohort, so every session shares one step clock. Chunk loss is judged by the
    steps of a session's own cohort; with one cohort a stalled session is certain to share it with the
    session it is compared against (with four, the two may land in different cohorts)."""
    import copy

    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=8, cohorts=1, max_send_backlog=20)
    s = start_stack(spec, copy.deepcopy(tiny_model), keys=[API_KEY])
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
