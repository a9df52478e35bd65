"""A real ``redis-server`` per test module on a free loopback port (no persistence), and helpers to wait on
agent updates with a deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from duplex.serving.agent.protocol import AgentState, AgentUpdate
from duplex.serving.agent.redis_server import RedisServer
from duplex.serving.spec import AgentSpec

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A fresh stream prefix per test: tests sharing one server never see each other's streams."""
    return f"t-{uuid.uuid4().hex[:8]}"


def fast_spec(prefix: str, **overrides: object) -> AgentSpec:
    """Short timers so crash recovery happens within a test's deadline."""
    base: dict[str, object] = dict(
        stream_prefix=prefix,
        tools=["calculator", "clock", "sleep", "explode"],
        plugins=["agent.agent_test_tools:TOOLS"],
        claim_idle_ms=300,
        block_ms=50,
        reconnect_initial_ms=20,
        reconnect_max_ms=200,
        max_deliveries=3,
        metrics_port=0,
        drain_grace_s=2.0,
    )
    base.update(overrides)
    return AgentSpec.model_validate(base)


class Updates:
    """Records every update ``AgentClient`` delivers; ``wait`` blocks until a predicate holds (deadline)."""

    def __init__(self) -> None:
        self.items: list[AgentUpdate] = []
        self._changed = asyncio.Event()

    def __call__(self, update: AgentUpdate) -> None:
        self.items.append(update)
        self._changed.set()

    def of(self, call_id: str) -> list[AgentState]:
        return [u.state for u in self.items if u.call_id == call_id]

    def final(self, call_id: str) -> AgentUpdate | None:
        return next((u for u in self.items if u.call_id == call_id and u.state.terminal), None)

    async def wait(self, pred: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what or pred}: {self.items}") from None

    async def wait_final(self, call_id: str, timeout_s: float = 30.0) -> AgentUpdate:
        await self.wait(lambda: self.final(call_id) is not None, timeout_s, f"a result of {call_id}")
        final = self.final(call_id)
        assert final is not None
        return final


async def poll(pred: Callable[[], object], timeout_s: float = 30.0, what: str = "") -> None:
    """Poll a real observable state (e.g. a Redis key) until it holds, failing after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)
