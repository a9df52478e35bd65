"""Prometheus metrics of the serving processes. Each server owns a registry (several servers may share one
process, e.g. ``duplex up`` and the tests) and exposes it on its own ``metrics_port``."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

if TYPE_CHECKING:
    from torch import nn

_MS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
ACTIVE_SESSIONS = "duplex_engine_active_sessions"
"""Live conversations of a replica (rank 0; ranks > 0 export 0): the metric the operator's HPA scales on."""

_TURN = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


class EngineMetrics:
    """What an engine replica exports (names prefixed ``duplex_engine_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._add_capacity(r)
        self._add_step_timing(r)
        self._add_traffic(r)
        self._add_agent(r)
        self._add_leak_watch(r)
        self._add_session_lifecycle(r)

    def _add_capacity(self, r: CollectorRegistry) -> None:
        """Sessions held and slots offered (the HPA's metric)."""
        self.active_sessions = Gauge(ACTIVE_SESSIONS, "Conversations holding a slot", registry=r)
        self.capacity = Gauge("duplex_engine_capacity_sessions", "Slots of this replica", registry=r)

    def _add_step_timing(self, r: CollectorRegistry) -> None:
        """How long steps take, how full they are, how long chunks wait for one, and turn-taking latency."""
        self.step_seconds = Histogram(
            "duplex_engine_step_seconds", "Model step + decode of one cohort", buckets=_MS, registry=r
        )
        self.batch_size = Histogram(
            "duplex_engine_step_batch_rows",
            "Rows (slots) per model step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.prompt_prefill_seconds = Histogram(
            "duplex_engine_prompt_prefill_seconds",
            "A session's prompt (PersonaPlex voice and persona) prefilled into its slot before its first step: "
            "the compute of its pieces, summed (they run between the other sessions' steps)",
            buckets=_MS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "duplex_engine_queue_wait_seconds",
            "Chunk received → the step that consumes it starts",
            buckets=_MS,
            registry=r,
        )
        self.turn_latency_seconds = Histogram(
            "duplex_engine_turn_latency_seconds",
            "End of user speech → model turn start, on the audio time axis as the server sees it",
            buckets=_TURN,
            registry=r,
        )

    def _add_traffic(self, r: CollectorRegistry) -> None:
        """Counts of what went through: chunks, errors, cohort migrations, steps by kind."""
        self.chunks = Counter("duplex_engine_chunks_total", "Audio chunks processed", ["kind"], registry=r)
        self.errors = Counter("duplex_engine_errors_total", "Conversations ended with an error", ["code"], registry=r)
        self.migrations = Counter(
            "duplex_engine_cohort_migrations_total", "Sessions moved to another cohort", registry=r
        )
        self.steps = Counter(
            "duplex_engine_steps_total",
            "Model steps by kind: regular (a cohort's tick), catchup (late or burst chunks), "
            "split (spare compute: the waiting members of a cohort without the rest)",
            ["kind"],
            registry=r,
        )

    def _add_agent(self, r: CollectorRegistry) -> None:
        """The background agent's updates and the tool-result text fed to the models."""
        self.agent_events = Counter(
            "duplex_engine_agent_events_total",
            "Background-agent updates sent to sessions, by state (QUEUED, RUNNING, DONE, FAILED) and origin "
            "(client: AgentRequest, model: a tool call in the model's text)",
            ["state", "origin"],
            registry=r,
        )
        self.agent_text_bytes = Counter(
            "duplex_engine_agent_text_bytes_total",
            "Bytes of tool-result text fed to the models' text input",
            registry=r,
        )

    def _add_leak_watch(self, r: CollectorRegistry) -> None:
        """Process memory and file descriptors, live asyncio tasks and occupied slots: what a soak watches."""
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...: leak watch (soak)
        self.asyncio_tasks = Gauge(
            "duplex_engine_asyncio_tasks",
            "Live asyncio tasks on the engine's event loop (a leak shows as growth with sessions coming and going)",
            registry=r,
        )
        self.slots_occupied = Gauge(
            "duplex_engine_slots_occupied",
            "Slots the step planner holds for sessions (0 once every conversation has ended)",
            registry=r,
        )

    def _add_session_lifecycle(self, r: CollectorRegistry) -> None:
        """How sessions come and go: resumes, expired resume graces, parked sessions, cohort placements."""
        self.resumed = Counter(
            "duplex_engine_resumed_sessions_total",
            "Sessions resumed on a new stream (SessionStart.resume_token) after their stream dropped",
            registry=r,
        )
        self.resume_expired = Counter(
            "duplex_engine_resume_expired_total",
            "Parked sessions (stream dropped) whose resume grace ran out: their slots were freed",
            registry=r,
        )
        self.parked_sessions = Gauge(
            "duplex_engine_parked_sessions",
            "Sessions whose stream dropped, holding their slot for a resume (counted in active sessions too)",
            registry=r,
        )
        self.placements = Counter(
            "duplex_engine_placements_total",
            "New sessions placed in a cohort: hint (arrived at the hinted phase), arrival "
            "(ignored or missed the hint), no_hint (sent no client clock)",
            ["how"],
            registry=r,
        )


class RankMetrics:
    """What a rank > 0 (an expert holder, ``duplex engine --rank K``) exports: its expert work, process
    metrics, and ``duplex_engine_active_sessions`` 0 — so an average over a replica's pods is the replica's
    sessions / shards, which the HPA's per-pod target assumes."""

    def __init__(self, rank: int, world_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)
        info = Gauge(
            "duplex_engine_rank_info", "This process's place in its shard group", ["rank", "world_size"], registry=r
        )
        info.labels(str(rank), str(world_size)).set(1)
        Gauge(ACTIVE_SESSIONS, "Conversations holding a slot (always 0: rank 0 holds them)", registry=r).set(0)
        self.expert_seconds = Histogram(
            "duplex_engine_expert_seconds",
            "One MoE request from rank 0: this rank's experts over the routed rows",
            buckets=_MS,
            registry=r,
        )

    def time_experts(self, shard: nn.Module) -> None:
        """Observe every forward of the shard's expert modules into ``expert_seconds`` (module hooks)."""
        from duplex.model.moe import Experts  # here: the picker imports this module and needs no torch

        started: list[float] = []

        def before(module: nn.Module, args: Any) -> None:
            started.append(time.perf_counter())

        def after(module: nn.Module, args: Any, output: Any) -> None:
            self.expert_seconds.observe(time.perf_counter() - started.pop())

        for module in shard.modules():
            if isinstance(module, Experts):
                module.register_forward_pre_hook(before)
                module.register_forward_hook(after)


class PickerMetrics:
    """What the session picker exports (names prefixed ``duplex_picker_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "duplex_picker_checks_total",
            "Session starts Envoy asked about, by answer (a gRPC code)",
            ["code"],
            registry=r,
        )
        self.placed = Counter("duplex_picker_placed_total", "Sessions placed, by replica", ["replica"], registry=r)
        self.replicas_healthy = Gauge("duplex_picker_replicas_healthy", "Engine replicas answering health", registry=r)
        self.client_secrets = Counter(
            "duplex_picker_realtime_client_secrets_total", "Realtime client secrets minted", registry=r
        )


class MetricsServer:
    """The /metrics HTTP endpoint of one registry; ``port=0`` means off."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        if port:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port) if self._server else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
