"""The engine's side of the background agent, on the event loop: tool calls in, ``AgentEvent``s and result
text out.

    AgentRequest (reader) ─┐                        ┌─▶ ServerEvent.agent (the Conversation's outbox)
                           ├─▶ AgentClient.submit ──┤
    [[call ...]] (output) ─┘     (a task each)      └─▶ DONE/FAILED: result_text → the session's text input

A call never blocks the stream reader or the step thread: each submit runs in a task of its own, and
``AgentClient.submit`` bounds its wait on Redis. Every update of a session that has ended is dropped.

A call's arguments are parsed here once (the model's) or taken as the client sent them, and travel on the
call's first ``AgentEvent`` (``arguments_json``: its QUEUED, or the FAILED of a call refused before it was
queued), so no one downstream parses the model's text again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from duplex.v1 import duplex_pb2 as pb

from ..agent.client import AgentClient
from ..agent.protocol import AgentState, AgentUpdate
from ..agent.redis_url import redact
from ..agent.toolcall import ToolCall, ToolCallParser, result_text
from ..agent.tools import builtin_tools
from ..metrics import EngineMetrics
from ..spec import AgentSpec, EngineSpec
from .session import Conversation
from .validate import MAX_TEXT_BYTES, AgentCall, agent_call_problem

log = logging.getLogger(__name__)

NO_AGENT = "no background agent configured on this engine"
MAX_CALLS_PER_SESSION = 1024
"""Tool calls one session may make (client and model together); later ones get FAILED."""


@dataclass(eq=False)
class AgentSession:
    """What the link knows of one conversation."""

    conversation: Conversation
    tools: frozenset[str]
    """Tools granted: ``SessionStart.tools`` (already checked to be among the replica's)."""
    parser: ToolCallParser = field(default_factory=ToolCallParser)
    """Finds ``[[call ...]]`` in the model's text as it is produced."""
    origins: dict[str, str] = field(default_factory=dict)
    """call id → "client" or "model", for every call made in this session."""
    queued: set[str] = field(default_factory=set)
    """Calls whose QUEUED was sent."""
    arguments: dict[str, str] = field(default_factory=dict)
    """call id → arguments, for calls submitted to the agent whose first event was not sent yet."""


class AgentLink:
    """Routes tool calls of the replica's sessions to the agent and its updates back to them."""

    def __init__(self, spec: EngineSpec, metrics: EngineMetrics, add_text: Callable[[Conversation, str], None]) -> None:
        """``add_text`` feeds text to a session's model text input (the engine encodes it for its model)."""
        self.spec, self.metrics, self.add_text = spec, metrics, add_text
        self.client: AgentClient | None = None
        self.sessions: dict[str, AgentSession] = {}
        """Keyed by ``Conversation.agent_id`` (unique per conversation, unlike client-chosen session ids)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int) -> None:
        """Connect to the agent when a Redis URL is configured (returns at once; Redis may still be down)."""
        if not self.spec.redis_url:
            return
        replica = self.spec.agent_replica_id or f"{os.environ.get('HOSTNAME') or socket.gethostname()}:{port}"
        # the engine checks arguments with the built-in tools' schemas; it loads no plugins, so a plugin tool in
        # engine.tools is refused here as unknown (named in the FAILED event) rather than queued unchecked
        builtin = {t.name for t in builtin_tools(AgentSpec())}
        tools = [t for t in self.spec.tools if t in builtin]
        if len(tools) < len(self.spec.tools):
            log.warning("engine.tools %s: not built-in; calls to them fail", sorted(set(self.spec.tools) - builtin))
        agent_spec = AgentSpec(stream_prefix=self.spec.agent_stream_prefix, tools=tools)
        self.client = AgentClient(self.spec.redis_url, replica, self.on_update, spec=agent_spec)
        await self.client.start()
        log.info(
            "background agent: redis %s, results stream %s", redact(self.spec.redis_url), self.client.results_stream
        )

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.client is not None:
            await self.client.close()

    # ----- sessions ---------------------------------------------------------------------------------
    def attach(self, conv: Conversation, tools: list[str]) -> None:
        self.sessions[conv.agent_id] = AgentSession(conv, frozenset(tools))

    def detach(self, conv: Conversation) -> None:
        """The conversation ended: its queued jobs are cancelled, its later updates dropped."""
        if self.sessions.pop(conv.agent_id, None) is not None and self.client is not None:
            self._spawn(self.client.cancel_session(conv.agent_id))

    # ----- calls ------------------------------------------------------------------------------------
    def request(self, conv: Conversation, call: AgentCall) -> None:
        """A client's ``AgentRequest`` (already framing-checked)."""
        self._call(conv, "client", call)

    def model_text(self, conv: Conversation, delta: str) -> None:
        """A piece of the model's text output: every complete ``[[call ...]]`` in it becomes a call."""
        s = self.sessions.get(conv.agent_id)
        if s is None:
            return
        for tc in s.parser.feed(delta):
            self._call(conv, "model", self._model_call(tc))

    @staticmethod
    def _model_call(tc: ToolCall) -> AgentCall:
        problem = tc.error or agent_call_problem(tc.tool, tc.arguments_json)
        return AgentCall(tc.call_id, tc.tool or "?", tc.arguments_json, 0.0, problem)

    def _call(self, conv: Conversation, origin: str, call: AgentCall) -> None:
        s = self.sessions.get(conv.agent_id)
        if s is None:
            return
        if call.call_id in s.origins:
            self._fail(s, call, f"call_id {call.call_id!r}: already used in this session")
            return
        if len(s.origins) >= MAX_CALLS_PER_SESSION:
            self._fail(s, call, f"more than {MAX_CALLS_PER_SESSION} tool calls in this session")
            return
        s.origins[call.call_id] = origin
        if call.problem is not None:
            self._fail(s, call, call.problem)
        elif self.client is None:
            self._fail(s, call, NO_AGENT)
        else:
            s.arguments[call.call_id] = call.arguments_json
            deadline = call.deadline_s or self.spec.agent_deadline_s
            self._spawn(
                self.client.submit(
                    conv.agent_id, call.call_id, call.tool, call.arguments_json, deadline, session_tools=s.tools
                )
            )

    def _fail(self, s: AgentSession, call: AgentCall, why: str) -> None:
        """A FAILED update produced here, without the agent (it is delivered like any other), carrying the
        refused call's own arguments (a reused call id's first call may still await its QUEUED)."""
        self._deliver(
            s,
            call.call_id,
            AgentUpdate(
                session_id=s.conversation.agent_id,
                call_id=call.call_id,
                tool=call.tool,
                state=AgentState.FAILED,
                detail=why,
            ),
            call.arguments_json,
        )

    # ----- updates ----------------------------------------------------------------------------------
    def on_update(self, update: AgentUpdate) -> None:
        """``AgentClient.on_event`` (event loop): announce it, and feed a result to the model."""
        s = self.sessions.get(update.session_id)
        if s is not None:
            self._deliver(s, update.call_id, update)

    def _deliver(self, s: AgentSession, call_id: str, update: AgentUpdate, arguments: str | None = None) -> None:
        """Announce ``update``; the call's first event carries its arguments (``arguments``, else those kept
        at submission)."""
        conv = s.conversation
        if conv.left or conv.closing is not None:
            return
        if update.state in (AgentState.RUNNING, AgentState.DONE) and call_id not in s.queued:
            # a worker can report before submit() returns from its XADD (the client then drops the late
            # QUEUED): the job evidently was queued, so the session still sees QUEUED first
            self._deliver(s, call_id, update.model_copy(update={"state": AgentState.QUEUED, "detail": ""}))
        if update.state == AgentState.QUEUED:
            s.queued.add(call_id)
        self.metrics.agent_events.labels(update.state.name, s.origins.get(call_id, "client")).inc()
        event = update.event()
        event.arguments_json = s.arguments.pop(call_id, "") if arguments is None else arguments
        conv.deliver([pb.ServerEvent(agent=event)])
        if update.state.terminal:
            # the event carries the whole result; the model gets at most MAX_TEXT_BYTES of it
            detail = update.detail.encode()[:MAX_TEXT_BYTES].decode(errors="ignore")
            text = result_text(update.call_id, update.tool, update.state.name, detail)
            self.metrics.agent_text_bytes.inc(len(text.encode()))
            self.add_text(conv, text)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent call failed: %s", task.exception())
