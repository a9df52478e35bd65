"""Job flow through a real redis-server: AgentClient → jobs stream → AgentWorker → results → on_event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from duplex.serving.agent.client import AgentClient
from duplex.serving.agent.protocol import WORKER_GROUP, AgentState, StreamNames
from duplex.serving.agent.redis_server import RedisServer
from duplex.serving.agent.tools import registry_for
from duplex.serving.agent.worker import AgentWorker, wall_ms
from duplex.serving.spec import AgentSpec

from .conftest import Updates, fast_spec, poll

DONE, FAILED, QUEUED, RUNNING = AgentState.DONE, AgentState.FAILED, AgentState.QUEUED, AgentState.RUNNING


@dataclass
class Agent:
    spec: AgentSpec
    client: AgentClient
    updates: Updates
    redis: Redis
    workers: list[tuple[AgentWorker, asyncio.Task[None]]]
    url: str

    def start_worker(self, name: str, now_ms: Callable[[], int] = wall_ms) -> AgentWorker:
        w = AgentWorker(self.spec, self.url, registry_for(self.spec), consumer=name, now_ms=now_ms)
        self.workers.append((w, asyncio.create_task(w.run())))
        return w

    async def stop_workers(self) -> None:
        for w, task in self.workers:
            w.stop()
            await task
            await w.drain(1.0)
        self.workers.clear()

    async def xlen(self, key: str) -> int:
        return int(await self.redis.xlen(key)) if await self.redis.exists(key) else 0


async def make_agent(url: str, prefix: str, **overrides: object) -> Agent:
    spec = fast_spec(prefix, **overrides)
    updates = Updates()
    client = AgentClient(url, "replica-0", updates, spec=spec, registry=registry_for(spec))
    await client.start()
    await asyncio.wait_for(client.connected.wait(), 10)
    return Agent(spec, client, updates, Redis.from_url(url), [], url)


@pytest.fixture
async def agent(redis_server: RedisServer, prefix: str) -> AsyncIterator[Agent]:
    a = await make_agent(redis_server.url, prefix)
    yield a
    await a.stop_workers()
    await a.client.close()
    await a.redis.aclose()


async def test_job_end_to_end(agent: Agent) -> None:
    worker = agent.start_worker("w1")
    await agent.client.submit("s1", "c1", "calculator", json.dumps({"expression": "(2 + 3) * -4 ** 2"}), 10)
    final = await agent.updates.wait_final("c1")
    assert final.state == DONE and final.detail == "-80" and final.session_id == "s1"
    assert agent.updates.of("c1") == [QUEUED, RUNNING, DONE]
    event = final.event()
    assert event.job_id == "c1" and event.tool == "calculator" and event.state == DONE and event.detail == "-80"
    names = StreamNames(agent.spec.stream_prefix)
    pending = await agent.redis.xpending(names.jobs, WORKER_GROUP)
    assert pending["pending"] == 0  # acknowledged once the result was written
    labels = {"tool": "calculator", "state": "DONE"}
    assert worker.metrics.registry.get_sample_value("duplex_agent_job_seconds_count", labels) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "session_tools", "needle"),
    [
        ("nope", "{}", None, "unknown tool 'nope'"),
        ("http_get", '{"url": "http://example.invalid/"}', None, "unknown tool 'http_get'"),  # not in the deployment
        ("clock", "{}", ["calculator"], "tool 'clock' is not granted to this session"),
        ("calculator", "{not json", None, "invalid arguments for calculator: not JSON"),
        ("calculator", '{"expression": "__import__(1)"}', None, "expression"),
        ("clock", '{"timezone": "Mars/Olympus"}', None, "timezone"),
        ("sleep", '{"seconds": -1}', None, "seconds"),
    ],
)
async def test_invalid_call_fails_before_queueing(
    agent: Agent, tool: str, arguments: str, session_tools: list[str] | None, needle: str
) -> None:
    await agent.client.submit("s1", "bad", tool, arguments, 10, session_tools=session_tools)
    assert agent.updates.of("bad") == [FAILED]  # delivered at once, synchronously with submit
    final = agent.updates.final("bad")
    assert final is not None and needle in final.detail
    assert await agent.xlen(StreamNames(agent.spec.stream_prefix).jobs) == 0


async def test_deadline_passed_fails_without_running(agent: Agent) -> None:
    agent.start_worker("w1", now_ms=lambda: wall_ms() + 60_000)  # the worker's clock is a minute ahead
    await agent.client.submit("s1", "late", "sleep", '{"seconds": 5}', deadline_s=10)
    final = await agent.updates.wait_final("late")
    assert final.state == FAILED and "deadline" in final.detail
    assert RUNNING not in agent.updates.of("late")


async def test_cancelled_session_jobs_are_skipped(agent: Agent) -> None:
    await agent.client.submit("s-gone", "c1", "calculator", '{"expression": "1+1"}', 10)
    await agent.client.submit("s-live", "c2", "calculator", '{"expression": "2+2"}', 10)
    await agent.client.cancel_session("s-gone")
    agent.start_worker("w1")  # starts only now: both jobs are still queued
    assert (await agent.updates.wait_final("c2")).detail == "4"
    # the cancelled session's job was skipped: one FAILED "cancelled" result and no RUNNING
    names = StreamNames(agent.spec.stream_prefix)
    await poll(lambda: agent.redis.exists(names.done("s-gone/c1")), what="the cancelled job to be finished")
    entries = await agent.redis.xrange(names.results("replica-0"))
    states = [json.loads(f[b"data"]) for _, f in entries]
    gone = [s for s in states if s["call_id"] == "c1"]
    assert [s["state"] for s in gone] == [int(FAILED)] and "cancelled" in gone[0]["detail"]  # no RUNNING


async def test_poison_job_dead_lettered_after_max_deliveries(agent: Agent) -> None:
    worker = agent.start_worker("w1")
    await agent.client.submit("s1", "poison", "explode", "{}", 30)
    final = await agent.updates.wait_final("poison")
    assert final.state == FAILED and "explode failed on every try" in final.detail and "boom" in final.detail
    explode = worker.registry.get("explode")
    assert explode is not None and explode.runs == agent.spec.max_deliveries  # type: ignore[attr-defined]
    names = StreamNames(agent.spec.stream_prefix)
    dead = await agent.redis.xrange(names.dead)
    assert len(dead) == 1 and json.loads(dead[0][1][b"data"])["call_id"] == "poison"
    assert worker.metrics.dead_letters._value.get() == 1
    assert worker.metrics.retries.labels("explode")._value.get() == agent.spec.max_deliveries - 1
    results = [json.loads(f[b"data"]) for _, f in await agent.redis.xrange(names.results("replica-0"))]
    assert sum(1 for r in results if r["call_id"] == "poison" and r["state"] in (DONE, FAILED)) == 1
    assert (await agent.redis.xpending(names.jobs, WORKER_GROUP))["pending"] == 0


async def test_a_call_id_never_yields_two_results(agent: Agent) -> None:
    # the same call queued twice (a client retry) and two workers racing for it: one result
    await agent.client.submit("s1", "twice", "sleep", '{"seconds": 0.2}', 10)
    await agent.client.submit("s1", "twice", "sleep", '{"seconds": 0.2}', 10)
    agent.start_worker("w1")
    agent.start_worker("w2")
    names = StreamNames(agent.spec.stream_prefix)
    await poll(lambda: agent.redis.exists(names.done("s1/twice")), what="the call's result")
    await poll(lambda: agent.redis.xpending(names.jobs, WORKER_GROUP), what="pending summary")
    await poll(async_pending_zero(agent.redis, names.jobs), what="both deliveries acknowledged")
    results = [json.loads(f[b"data"]) for _, f in await agent.redis.xrange(names.results("replica-0"))]
    assert [r["state"] for r in results if r["state"] in (DONE, FAILED)] == [int(DONE)]
    assert [u for u in agent.updates.of("twice") if u.terminal] == [DONE]


def async_pending_zero(r: Redis, stream: str) -> Callable[[], object]:
    async def check() -> bool:
        return int((await r.xpending(stream, WORKER_GROUP))["pending"]) == 0

    return check


async def test_tool_error_fails_once_without_retry(agent: Agent) -> None:
    worker = agent.start_worker("w1")
    await agent.client.submit("s1", "div0", "calculator", '{"expression": "1 / (2 - 2)"}', 10)
    final = await agent.updates.wait_final("div0")
    assert final.state == FAILED and final.detail == "division by zero"
    assert worker.metrics.retries.labels("calculator")._value.get() == 0


async def test_tool_timeout_fails(agent: Agent, redis_server: RedisServer, prefix: str) -> None:
    await agent.client.close()
    a = await make_agent(redis_server.url, prefix + "-t", tool_timeout_s=0.2)
    try:
        a.start_worker("w1")
        await a.client.submit("s1", "slow", "sleep", '{"seconds": 5}', 10)
        final = await a.updates.wait_final("slow")
        assert final.state == FAILED and "timed out after 0.2s" in final.detail
    finally:
        await a.stop_workers()
        await a.client.close()
        await a.redis.aclose()
