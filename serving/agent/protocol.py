"""The records on the agent's streams and the stream names of one deployment.

A job goes engine → ``jobs`` stream → a worker; its updates (RUNNING, then one DONE or FAILED) go to the
``reply_to`` stream the job names (one per engine replica). Every record is one JSON field ``data``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from duplex.v1 import duplex_pb2

DATA = b"data"
"""The one field of every stream entry: the record as JSON."""


class AgentState(enum.IntEnum):
    """A job's state, with the wire values of ``duplex.v1.AgentState``."""

    QUEUED = duplex_pb2.QUEUED
    RUNNING = duplex_pb2.RUNNING
    DONE = duplex_pb2.DONE
    FAILED = duplex_pb2.FAILED

    @property
    def terminal(self) -> bool:
        return self in (AgentState.DONE, AgentState.FAILED)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AgentJob(_Record):
    """One tool call to run."""

    session_id: str = Field(min_length=1, max_length=256)
    """Conversation that asked for it; results go back into this session."""
    call_id: str = Field(min_length=1, max_length=256)
    """Id of the call within the session (client-chosen for ``AgentRequest``, parser-made for model calls);
    (session_id, call_id) yields at most one DONE/FAILED."""
    tool: str = Field(min_length=1, max_length=64)
    """Registered tool name."""
    arguments: str = "{}"
    """The tool's arguments as a JSON object (already validated by the submitter)."""
    deadline_ms: int = Field(ge=0)
    """Absolute deadline (Unix epoch milliseconds): a job picked up later fails without running."""
    enqueued_ms: int = Field(0, ge=0)
    """When it was queued (Unix epoch milliseconds), for the latency histogram."""
    reply_to: str = Field(min_length=1)
    """Stream the updates go to (the submitting engine replica's results stream)."""
    attempt: int = Field(1, ge=1)
    """Delivery number of this run (1 = first). Filled in by the worker from the stream's delivery count;
    the stored entry always says 1."""

    @property
    def key(self) -> str:
        """Identity of the call for idempotency: session and call id together."""
        return f"{self.session_id}/{self.call_id}"


class AgentUpdate(_Record):
    """A job's state change, delivered to the engine (``AgentClient.on_event``)."""

    session_id: str
    """Conversation the job belongs to."""
    call_id: str
    """Id of the call (``AgentEvent.job_id`` on the wire)."""
    tool: str
    """Tool name."""
    state: AgentState
    """QUEUED, RUNNING, DONE or FAILED."""
    detail: str = ""
    """DONE: the tool's result text; FAILED: why; else empty."""

    def event(self) -> duplex_pb2.AgentEvent:
        """The update as the gRPC stream's ``AgentEvent``."""
        return duplex_pb2.AgentEvent(
            job_id=self.call_id, tool=self.tool, state=duplex_pb2.AgentState.ValueType(self.state), detail=self.detail
        )


@dataclass(frozen=True)
class StreamNames:
    """Keys of one deployment, all derived from one prefix. The prefix is wrapped in a Redis Cluster hash tag
    (``{prefix}``) so the finish script's keys share a slot."""

    prefix: str

    def _key(self, *parts: str) -> str:
        return ":".join((f"{{{self.prefix}}}", *parts))

    @property
    def jobs(self) -> str:
        return self._key("jobs")

    @property
    def dead(self) -> str:
        return self._key("dead")

    def results(self, replica_id: str) -> str:
        """The results stream of one engine replica."""
        return self._key("results", replica_id)

    def done(self, job_key: str) -> str:
        """The idempotency guard of one call: set (NX) together with its one terminal update."""
        return self._key("done", job_key)

    def cancelled(self, session_id: str) -> str:
        """Marker of an ended session: its jobs still queued are skipped."""
        return self._key("cancel", session_id)


WORKER_GROUP = "workers"
"""Consumer group of the workers on the jobs stream."""
ENGINE_GROUP = "engine"
"""Consumer group of an engine replica on its results stream."""
