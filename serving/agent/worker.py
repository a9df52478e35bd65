"""The worker pool of ``duplex agent``: consumes the jobs stream in the ``workers`` group and runs the tools.

Per job: skip it if its call already has a result (idempotency guard), dead-letter it if delivered more than
``max_deliveries`` times, fail it if its session was cancelled or its deadline passed, else publish RUNNING,
run the tool with a timeout while keeping the delivery fresh (so no other worker claims it), and finish it:
the terminal update, the guard and the XACK in one Lua script. A tool that raises ``ToolError`` fails the call;
any other exception leaves the delivery pending, so it is retried after ``claim_idle_ms`` (``XAUTOCLAIM``) —
by this or another worker — until the last allowed delivery, which dead-letters it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from duplex.serving.spec import AgentSpec

from .metrics import AgentMetrics
from .protocol import WORKER_GROUP, AgentJob, AgentState, AgentUpdate, StreamNames
from .streams import (
    FINISH_LUA,
    REDIS_DOWN,
    Backoff,
    claimed_entries,
    connect,
    ensure_group,
    entry_data,
    is_nogroup,
    read_entries,
)
from .tools import InvalidArguments, ToolError, ToolRegistry

log = logging.getLogger("duplex.agent")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AgentWorker:
    """A pool of ``spec.concurrency`` concurrent jobs in one process."""

    def __init__(
        self,
        spec: AgentSpec,
        redis_url: str,
        registry: ToolRegistry,
        consumer: str | None = None,
        metrics: AgentMetrics | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.spec, self.registry = spec, registry
        self.names = StreamNames(spec.stream_prefix)
        self.consumer = consumer or default_consumer()
        self.metrics = metrics or AgentMetrics()
        self.now_ms = now_ms
        self._redis = connect(redis_url)
        self._finish = self._redis.register_script(FINISH_LUA)
        self._backoff = Backoff(spec.reconnect_initial_ms / 1000, spec.reconnect_max_ms / 1000)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once the worker has reached Redis and created its group."""

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume jobs until ``stop()``; reconnects with backoff while Redis is unreachable."""
        stats = asyncio.create_task(self._stats_loop(), name="agent-stats")
        try:
            while not self._stopping.is_set():
                try:
                    await ensure_group(self._redis, self.names.jobs, WORKER_GROUP)
                    self._backoff.reset()
                    self.ready.set()
                    await self._consume()
                except REDIS_DOWN as e:
                    self.metrics.reconnects.inc()
                    await self._wait_or_stop(self._backoff.wait(e))
                except Exception as e:
                    if not is_nogroup(e):
                        raise
                    log.warning("jobs group missing (redis restarted empty?): recreating it")
        finally:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats

    def stop(self) -> None:
        """Stop taking jobs (``run`` returns after its current read)."""
        self._stopping.set()
        self._slot_free.set()

    async def drain(self, grace_s: float) -> None:
        """Let running jobs finish for ``grace_s``; cancel the rest — they stay pending for another worker."""
        tasks = list(self._running.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)
                log.info("released %d running job(s) at shutdown; another worker will claim them", len(late))
        await self._redis.aclose()

    async def _wait_or_stop(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in (task, stop):
            t.cancel()

    # --- consuming -------------------------------------------------------------------------------------------

    async def _free_slots(self) -> int:
        while len(self._running) >= self.spec.concurrency and not self._stopping.is_set():
            self._slot_free.clear()
            await self._slot_free.wait()
        return self.spec.concurrency - len(self._running)

    async def _consume(self) -> None:
        r, jobs = self._redis, self.names.jobs
        loop = asyncio.get_running_loop()
        history: str | None = "0"  # own pending entries first (a restart or reconnect), then new ones (">")
        next_claim = 0.0
        while not self._stopping.is_set():
            free = await self._free_slots()
            if self._stopping.is_set():
                return
            if history is None and loop.time() >= next_claim:  # claiming first would re-read claims as own
                next_claim = loop.time() + self.spec.claim_idle_ms / 2000
                claimed = claimed_entries(
                    await r.xautoclaim(
                        jobs, WORKER_GROUP, self.consumer, min_idle_time=self.spec.claim_idle_ms, count=free
                    )
                )
                fresh = [(eid, f) for eid, f in claimed if f and eid not in self._running]
                for eid, fields in fresh:
                    log.info("claimed job %s idle > %d ms", eid, self.spec.claim_idle_ms)
                    self._start(eid, fields, None)
                if fresh:
                    continue
            block = None if history is not None else min(self.spec.block_ms, self.spec.claim_idle_ms // 2 or 1)
            entries = read_entries(
                await r.xreadgroup(WORKER_GROUP, self.consumer, {jobs: history or ">"}, count=free, block=block)
            )
            if history is not None:
                if not entries:
                    history = None
                    continue
                history = entries[-1][0]
            for eid, fields in entries:
                if eid not in self._running and fields:
                    self._start(eid, fields, 1 if history is None else None)

    def _start(self, entry_id: str, fields: dict[Any, Any], delivered: int | None) -> None:
        task = asyncio.create_task(self._handle(entry_id, fields, delivered), name=f"agent-job-{entry_id}")
        self._running[entry_id] = task
        self.metrics.running.set(len(self._running))

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(entry_id, None)
            self.metrics.running.set(len(self._running))
            self._slot_free.set()

        task.add_done_callback(done)

    # --- one job ---------------------------------------------------------------------------------------------

    async def _delivery_count(self, entry_id: str) -> int:
        info = await self._redis.xpending_range(self.names.jobs, WORKER_GROUP, entry_id, entry_id, 1)
        return int(info[0]["times_delivered"]) if info else 1

    async def _handle(self, entry_id: str, fields: dict[Any, Any], delivered: int | None) -> None:
        try:
            await self._handle_job(entry_id, fields, delivered)
        except REDIS_DOWN as e:  # the delivery stays pending: re-read on reconnect or claimed by another worker
            log.warning("job %s interrupted: redis unavailable (%s)", entry_id, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: unexpected error; left pending for a retry", entry_id)

    async def _handle_job(self, entry_id: str, fields: dict[Any, Any], delivered: int | None) -> None:
        r = self._redis
        try:
            job = AgentJob.model_validate_json(entry_data(fields))
        except (KeyError, ValidationError) as e:
            log.error("job %s is malformed (%s): dead-lettered", entry_id, e)
            async with r.pipeline(transaction=True) as p:
                p.xadd(
                    self.names.dead,
                    {"data": repr(fields)[:4096], "entry": entry_id},
                    maxlen=self.spec.dead_letter_maxlen,
                    approximate=True,
                )
                p.xack(self.names.jobs, WORKER_GROUP, entry_id)
                await p.execute()
            self.metrics.dead_letters.inc()
            return
        if delivered is None:
            delivered = await self._delivery_count(entry_id)
        job = job.model_copy(update={"attempt": delivered})
        if await r.exists(self.names.done(job.key)):
            await r.xack(self.names.jobs, WORKER_GROUP, entry_id)  # finished earlier; only the ack was lost
            return
        if delivered > self.spec.max_deliveries:
            await self._dead_letter(entry_id, job, f"gave up after {delivered - 1} deliveries")
            return
        if await r.exists(self.names.cancelled(job.session_id)):
            await self._finish_job(entry_id, job, AgentState.FAILED, "cancelled: the session ended")
            return
        remaining_s = (job.deadline_ms - self.now_ms()) / 1000
        if remaining_s <= 0:
            await self._finish_job(entry_id, job, AgentState.FAILED, "deadline passed before the job started")
            return
        tool = self.registry.get(job.tool)
        if tool is None:
            await self._finish_job(entry_id, job, AgentState.FAILED, f"tool {job.tool!r} is not enabled on workers")
            return
        try:
            args = tool.parse(job.arguments)
        except InvalidArguments as e:
            await self._finish_job(entry_id, job, AgentState.FAILED, str(e))
            return
        if delivered > 1:
            self.metrics.retries.labels(job.tool).inc()
        await self._publish(job, AgentState.RUNNING, "" if delivered == 1 else f"attempt {delivered}")
        timeout_s = min(tool.timeout_s, self.spec.tool_timeout_s, remaining_s)
        heartbeat = asyncio.create_task(self._keep_fresh(entry_id))
        try:
            result = await asyncio.wait_for(tool.run(args), timeout_s)
        except ToolError as e:
            state, detail = AgentState.FAILED, str(e)
        except TimeoutError:
            state, detail = AgentState.FAILED, f"{job.tool} timed out after {timeout_s:.1f}s"
        except Exception as e:
            if delivered >= self.spec.max_deliveries:
                await self._dead_letter(entry_id, job, f"{type(e).__name__}: {e}")
                return
            log.warning("job %s (%s) raised %s on delivery %d; will be retried", entry_id, job.tool, e, delivered)
            return
        else:
            state, detail = AgentState.DONE, result
        finally:
            heartbeat.cancel()
        await self._finish_job(entry_id, job, state, detail)

    async def _keep_fresh(self, entry_id: str) -> None:
        """Reset the delivery's idle time while the job runs, so no other worker claims it."""
        while True:
            await asyncio.sleep(self.spec.claim_idle_ms / 3000)
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.xclaim(self.names.jobs, WORKER_GROUP, self.consumer, 0, [entry_id], justid=True)

    async def _publish(self, job: AgentJob, state: AgentState, detail: str = "") -> None:
        update = AgentUpdate(session_id=job.session_id, call_id=job.call_id, tool=job.tool, state=state, detail=detail)
        await self._redis.xadd(
            job.reply_to, {"data": update.model_dump_json()}, maxlen=self.spec.results_maxlen, approximate=True
        )

    async def _dead_letter(self, entry_id: str, job: AgentJob, why: str) -> None:
        log.error("job %s (%s, call %s) dead-lettered: %s", entry_id, job.tool, job.key, why)
        dead = job.model_dump_json()
        if await self._finish_job(
            entry_id, job, AgentState.FAILED, f"{job.tool} failed on every try ({why})", dead_letter=dead
        ):
            self.metrics.dead_letters.inc()

    async def _finish_job(
        self, entry_id: str, job: AgentJob, state: AgentState, detail: str, dead_letter: str = ""
    ) -> bool:
        """Write the terminal update (once per call), then ack — retried until Redis takes it, so a finished
        job is never lost; returns whether this call published the update."""
        update = AgentUpdate(session_id=job.session_id, call_id=job.call_id, tool=job.tool, state=state, detail=detail)
        keys = [self.names.done(job.key), job.reply_to, self.names.jobs, self.names.dead]
        argv: list[str | int] = [
            self.spec.result_ttl_s * 1000,
            self.spec.results_maxlen,
            WORKER_GROUP,
            entry_id,
            update.model_dump_json(),
            dead_letter,
            self.spec.dead_letter_maxlen,
        ]
        backoff = Backoff(self._backoff.initial_s, self._backoff.max_s)
        while True:
            try:
                published = bool(await self._finish(keys=keys, args=argv))
                break
            except REDIS_DOWN as e:
                if self._stopping.is_set():
                    raise
                await backoff.wait(e)
        if published:
            self.metrics.job_seconds.labels(job.tool, state.name).observe(
                max(0.0, (self.now_ms() - job.enqueued_ms) / 1000) if job.enqueued_ms else 0.0
            )
        return published

    async def _stats_loop(self, interval_s: float = 2.0) -> None:
        while True:
            with contextlib.suppress(*REDIS_DOWN, Exception):
                for g in await self._redis.xinfo_groups(self.names.jobs):
                    if g.get("name") in (WORKER_GROUP, WORKER_GROUP.encode()):
                        self.metrics.queue_depth.set(int(g.get("lag") or 0))
                        self.metrics.pending.set(int(g.get("pending") or 0))
            await asyncio.sleep(interval_s)
