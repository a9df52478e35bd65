"""The engine-facing side of the agent: submit jobs, cancel a session's jobs, receive updates.

``AgentClient`` never makes a conversation wait on Redis: ``submit`` validates first (unknown tool, tool not
granted, invalid arguments → an immediate FAILED update naming the problem, nothing queued), then gives Redis
``submit_timeout_s`` to take the job; if it cannot, the update is FAILED "agent unavailable: ...". A reader task
consumes this replica's results stream in its own consumer group, hands every update to ``on_event`` and acks
it after delivery; it reconnects with backoff while Redis is down. ``on_event`` runs on the event loop that
called ``start`` and must not block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from duplex.serving.spec import AgentSpec

from .protocol import ENGINE_GROUP, AgentJob, AgentState, AgentUpdate, StreamNames
from .streams import REDIS_DOWN, Backoff, connect, ensure_group, entry_data, is_nogroup, read_entries
from .tools import InvalidArguments, ToolRegistry, registry_for
from .worker import wall_ms

log = logging.getLogger("duplex.agent")

_FINISHED_REMEMBERED = 4096


class AgentClient:
    """One engine replica's connection to the agent."""

    def __init__(
        self,
        redis_url: str,
        replica_id: str,
        on_event: Callable[[AgentUpdate], None],
        spec: AgentSpec | None = None,
        allowed_tools: Collection[str] | None = None,
        registry: ToolRegistry | None = None,
        submit_timeout_s: float = 0.25,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.spec = spec or AgentSpec()
        self.replica_id = replica_id
        self.on_event = on_event
        self.registry = registry if registry is not None else registry_for(self.spec)
        self.allowed_tools = frozenset(allowed_tools if allowed_tools is not None else self.spec.tools)
        self.submit_timeout_s = submit_timeout_s
        self.now_ms = now_ms
        self.names = StreamNames(self.spec.stream_prefix)
        self.results_stream = self.names.results(replica_id)
        self._redis = connect(redis_url, connect_timeout_s=submit_timeout_s)
        self._reader: asyncio.Task[None] | None = None
        self._last_state: dict[tuple[str, str], AgentState] = {}
        self._finished: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self.connected = asyncio.Event()
        """Set while the reader is attached to Redis (cleared while it reconnects)."""

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader task; returns at once (Redis may still be unreachable)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_results(), name=f"agent-results-{self.replica_id}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._redis.aclose()

    # --- engine API ------------------------------------------------------------------------------------------

    def check(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        arguments_json: str,
        deadline_s: float,
        session_tools: Collection[str] | None = None,
    ) -> str | None:
        """Why this call cannot be queued, or None. ``session_tools``: the session's ``SessionStart.tools``
        (None = every tool of the deployment)."""
        if not session_id:
            return "session_id: must not be empty"
        if not call_id or len(call_id) > 256:
            return "call_id: must be 1 to 256 characters"
        if tool not in self.registry or tool not in self.allowed_tools:
            return f"unknown tool {tool!r} (deployment tools: {', '.join(sorted(self.allowed_tools)) or 'none'})"
        if session_tools is not None and tool not in session_tools:
            granted = sorted(self.allowed_tools & set(session_tools))
            return f"tool {tool!r} is not granted to this session (granted: {', '.join(granted) or 'none'})"
        if not deadline_s > 0:
            return "deadline_s: must be positive"
        tool_obj = self.registry.get(tool)
        assert tool_obj is not None
        try:
            tool_obj.parse(arguments_json)
        except InvalidArguments as e:
            return str(e)
        return None

    async def submit(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        arguments_json: str,
        deadline_s: float,
        session_tools: Collection[str] | None = None,
    ) -> None:
        """Queue one tool call. Every outcome arrives through ``on_event``: QUEUED (then RUNNING and one DONE
        or FAILED from a worker), or FAILED at once when the call is invalid or Redis does not take it."""

        def update(state: AgentState, detail: str = "") -> AgentUpdate:
            return AgentUpdate(session_id=session_id, call_id=call_id, tool=tool, state=state, detail=detail)

        problem = self.check(session_id, call_id, tool, arguments_json, deadline_s, session_tools)
        if problem is not None:
            self._deliver(update(AgentState.FAILED, problem))
            return
        now = self.now_ms()
        try:
            job = AgentJob(
                session_id=session_id,
                call_id=call_id,
                tool=tool,
                arguments=arguments_json or "{}",
                deadline_ms=now + int(deadline_s * 1000),
                enqueued_ms=now,
                reply_to=self.results_stream,
            )
        except ValidationError as e:  # lengths beyond check(): name the field
            field = ".".join(str(x) for x in e.errors()[0]["loc"])
            self._deliver(update(AgentState.FAILED, f"{field}: {e.errors()[0]['msg']}"))
            return
        try:
            await asyncio.wait_for(self._queue(job), self.submit_timeout_s)
        except (*REDIS_DOWN, TimeoutError) as e:
            self._deliver(update(AgentState.FAILED, f"agent unavailable: {str(e) or type(e).__name__}"))
            return
        self._deliver(update(AgentState.QUEUED))

    async def _queue(self, job: AgentJob) -> None:
        """XADD the job. A pooled connection that Redis closed (it restarted) fails on first use: one retry
        takes a fresh one. Should the first XADD have landed after all, the worker's idempotency guard still
        gives the call one result."""
        for attempt in (1, 2):
            try:
                await self._redis.xadd(
                    self.names.jobs, {"data": job.model_dump_json()}, maxlen=self.spec.jobs_maxlen, approximate=True
                )
                return
            except (RedisConnectionError, ConnectionError):
                if attempt == 2:
                    raise

    async def cancel_session(self, session_id: str) -> None:
        """The session ended: its jobs not yet started are skipped by the workers (best effort)."""
        for key in [k for k in self._last_state if k[0] == session_id]:
            del self._last_state[key]
        try:
            await asyncio.wait_for(
                self._redis.set(self.names.cancelled(session_id), "1", px=self.spec.cancel_ttl_s * 1000),
                self.submit_timeout_s,
            )
        except (*REDIS_DOWN, TimeoutError) as e:
            log.warning("could not cancel the jobs of session %s: %s", session_id, e)

    # --- delivery --------------------------------------------------------------------------------------------

    def _deliver(self, update: AgentUpdate) -> None:
        """Hand an update to ``on_event`` unless it is stale: a state at or before the one already delivered,
        or anything after the call's terminal update."""
        key = (update.session_id, update.call_id)
        if key in self._finished:
            return
        last = self._last_state.get(key)
        if last is not None and update.state <= last:
            return
        if update.state.terminal:
            self._last_state.pop(key, None)
            self._finished[key] = None
            while len(self._finished) > _FINISHED_REMEMBERED:
                self._finished.popitem(last=False)
        else:
            self._last_state[key] = update.state
        try:
            self.on_event(update)
        except Exception:
            log.exception("on_event failed for %s/%s", update.session_id, update.call_id)

    async def _read_results(self) -> None:
        r, stream = self._redis, self.results_stream
        backoff = Backoff(self.spec.reconnect_initial_ms / 1000, self.spec.reconnect_max_ms / 1000)
        while True:
            try:
                await ensure_group(r, stream, ENGINE_GROUP)
                backoff.reset()
                self.connected.set()
                history: str | None = "0"  # updates delivered to this replica before a restart, then new ones
                while True:
                    entries = read_entries(
                        await r.xreadgroup(
                            ENGINE_GROUP,
                            self.replica_id,
                            {stream: history or ">"},
                            count=100,
                            block=None if history else self.spec.block_ms,
                        )
                    )
                    if history is not None:
                        history = entries[-1][0] if entries else None
                    for eid, fields in entries:
                        if fields:
                            self._deliver_raw(eid, fields)
                    if entries:
                        await r.xack(stream, ENGINE_GROUP, *[eid for eid, _ in entries])
            except REDIS_DOWN as e:
                self.connected.clear()
                await backoff.wait(e)
            except Exception as e:
                if not is_nogroup(e):
                    raise
                log.warning("results group missing (redis restarted empty?): recreating it")

    def _deliver_raw(self, entry_id: str, fields: dict[Any, Any]) -> None:
        try:
            update = AgentUpdate.model_validate_json(entry_data(fields))
        except (KeyError, ValidationError) as e:
            log.error("malformed update %s on %s: %s", entry_id, self.results_stream, e)
            return
        self._deliver(update)
