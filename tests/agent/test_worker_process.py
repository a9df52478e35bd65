"""``duplex agent`` as a real process: SIGKILL mid-job → another worker reclaims it → exactly one DONE;
SIGTERM → exit 0; Redis stopped and restarted mid-run → fail soft while down, recover after, lose nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from duplex.serving.agent.client import AgentClient
from duplex.serving.agent.protocol import WORKER_GROUP, AgentState, StreamNames
from duplex.serving.agent.redis_server import RedisServer
from duplex.serving.agent.tools import registry_for
from duplex.serving.agent.worker import AgentWorker
from duplex.serving.ports import free_port
from duplex.serving.spec import AgentSpec

from .conftest import Updates, fast_spec, poll

TESTS = Path(__file__).resolve().parent.parent
DUPLEX = Path(sys.executable).with_name("duplex")


class WorkerProcess:
    """``duplex agent`` in a child process with the test tools on its path; ready once it says so."""

    def __init__(self, url: str, spec: AgentSpec, config: Path, *extra: str) -> None:
        config.write_text(json.dumps({"agent": spec.model_dump(mode="json")}))
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.proc = subprocess.Popen(
            [str(DUPLEX), "agent", "--redis-url", url, "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

    async def ready(self, timeout_s: float = 120.0) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        assert "duplex agent: ready" in line, line + (self.proc.stderr.read() if self.proc.stderr else "")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.fixture
async def client_updates(redis_server: RedisServer, prefix: str) -> AsyncIterator[tuple[AgentClient, Updates]]:
    spec = fast_spec(prefix)
    updates = Updates()
    client = AgentClient(redis_server.url, "replica-0", updates, spec=spec, registry=registry_for(spec))
    await client.start()
    yield client, updates
    await client.close()


async def test_worker_killed_mid_job_is_reclaimed_exactly_one_done(
    redis_server: RedisServer, prefix: str, tmp_path: Path, client_updates: tuple[AgentClient, Updates]
) -> None:
    client, updates = client_updates
    spec = fast_spec(prefix, claim_idle_ms=500)
    first = WorkerProcess(redis_server.url, spec, tmp_path / "agent.json")
    try:
        await first.ready()
        await client.submit("s1", "slow", "sleep", '{"seconds": 3.0}', 60)
        await updates.wait(lambda: AgentState.RUNNING in updates.of("slow"), what="the first worker to start")
        first.kill()  # SIGKILL mid-job: no result, the delivery stays pending under a dead consumer
        assert first.proc.returncode == -signal.SIGKILL
        assert updates.final("slow") is None
        second = WorkerProcess(redis_server.url, spec, tmp_path / "agent2.json")
        try:
            await second.ready()
            final = await updates.wait_final("slow", timeout_s=60)
            assert final.state == AgentState.DONE and final.detail == "slept 3.0"
        finally:
            second.close()
    finally:
        first.close()
    r = Redis.from_url(redis_server.url)
    names = StreamNames(prefix)
    results = [json.loads(f[b"data"]) for _, f in await r.xrange(names.results("replica-0"))]
    assert [x["state"] for x in results if x["state"] in (AgentState.DONE, AgentState.FAILED)] == [AgentState.DONE]
    assert [x["detail"] for x in results if x["state"] == AgentState.RUNNING] == ["", "attempt 2"]
    assert (await r.xpending(names.jobs, WORKER_GROUP))["pending"] == 0
    await r.aclose()


async def test_sigterm_stops_taking_jobs_and_exits_zero(
    redis_server: RedisServer, prefix: str, tmp_path: Path, client_updates: tuple[AgentClient, Updates]
) -> None:
    client, updates = client_updates
    port = free_port()
    worker = WorkerProcess(
        redis_server.url,
        fast_spec(prefix, host="127.0.0.1"),
        tmp_path / "agent.json",
        "--set",
        "agent.concurrency=2",
        "--metrics-port",
        str(port),
    )
    try:
        await worker.ready()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for name in (
            "duplex_agent_queue_depth",
            "duplex_agent_pending_jobs",
            "duplex_agent_job_seconds",
            "duplex_agent_retries_total",
            "duplex_agent_dead_letters_total",
        ):
            assert name in text
        await client.submit("s1", "short", "sleep", '{"seconds": 0.3}', 30)
        await updates.wait(lambda: AgentState.RUNNING in updates.of("short"), what="the job to start")
        worker.proc.send_signal(signal.SIGTERM)  # the running job finishes within drain_grace_s
        assert await asyncio.to_thread(worker.proc.wait, 20) == 0
        assert (await updates.wait_final("short")).state == AgentState.DONE
    finally:
        worker.close()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"agent": {"concurrency": 0}}))
    out = subprocess.run(
        [str(DUPLEX), "agent", "--redis-url", "redis://127.0.0.1:1/0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "concurrency" in out.stderr
    config.write_text(json.dumps({"agent": {"tools": ["nope"]}}))
    out = subprocess.run(
        [str(DUPLEX), "agent", "--redis-url", "redis://127.0.0.1:1/0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "agent.tools: unknown tool(s) 'nope'" in out.stderr


async def test_redis_outage_fail_soft_then_recover(tmp_path: Path, prefix: str) -> None:
    server = RedisServer(data_dir=tmp_path / "redis")  # append-only file: the restart keeps the streams
    server.start()
    spec = fast_spec(prefix)
    updates = Updates()
    client = AgentClient(server.url, "replica-0", updates, spec=spec, registry=registry_for(spec))
    worker = AgentWorker(spec, server.url, registry_for(spec), consumer="w1")
    run = asyncio.create_task(worker.run())
    await client.start()
    try:
        await client.submit("s1", "before", "calculator", '{"expression": "6*7"}', 30)
        assert (await updates.wait_final("before")).detail == "42"
        await client.submit("s1", "inflight", "sleep", '{"seconds": 2.0}', 60)
        await updates.wait(lambda: AgentState.RUNNING in updates.of("inflight"), what="the in-flight job to start")
        server.stop()  # Redis down while the job runs: its result cannot be written yet

        await client.submit("s1", "during", "calculator", '{"expression": "1+1"}', 30)
        during = updates.final("during")  # delivered before submit returned: nothing waited on Redis
        assert during is not None and during.state == AgentState.FAILED
        assert during.detail.startswith("agent unavailable: ")
        await poll(lambda: not client.connected.is_set(), what="the reader to notice")
        await poll(lambda: worker.metrics.reconnects._value.get() > 0, what="the worker to notice")

        server.start()  # same port, same data
        final = await updates.wait_final("inflight", timeout_s=60)  # written after the restart, not lost
        assert final.state == AgentState.DONE and final.detail == "slept 2.0"
        await client.submit("s1", "after", "calculator", '{"expression": "2**10"}', 30)
        assert (await updates.wait_final("after", timeout_s=60)).detail == "1024"
        assert [u.call_id for u in updates.items if u.state.terminal] == ["before", "during", "inflight", "after"]
    finally:
        worker.stop()
        await run
        await worker.drain(1.0)
        await client.close()
        server.stop()
