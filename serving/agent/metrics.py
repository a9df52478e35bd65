"""Prometheus metrics of an agent worker process (names prefixed ``duplex_agent_``), on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_JOB = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "duplex_agent_queue_depth", "Jobs queued and not yet delivered to any worker", registry=r
        )
        self.pending = Gauge(
            "duplex_agent_pending_jobs", "Jobs delivered to a worker and not yet acknowledged", registry=r
        )
        self.running = Gauge("duplex_agent_running_jobs", "Jobs this process is running", registry=r)
        self.job_seconds = Histogram(
            "duplex_agent_job_seconds",
            "Queued → result written, by tool and outcome",
            ["tool", "state"],
            buckets=_JOB,
            registry=r,
        )
        self.retries = Counter(
            "duplex_agent_retries_total",
            "Jobs run again after an earlier delivery did not finish",
            ["tool"],
            registry=r,
        )
        self.dead_letters = Counter(
            "duplex_agent_dead_letters_total", "Jobs moved to the dead-letter stream", registry=r
        )
        self.reconnects = Counter("duplex_agent_redis_reconnects_total", "Failed tries to reach Redis", registry=r)
