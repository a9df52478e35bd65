"""The Realtime endpoint's Prometheus metrics, on the engine's registry (exported on its ``metrics_port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BRIDGE_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 0.01, 0.02, 0.05, 0.1)
"""The bridge's own work per chunk is well under a millisecond on an idle core: buckets from 50 µs."""


class RealtimeMetrics:
    """Names prefixed ``duplex_engine_realtime_`` (client secrets are the session picker's:
    ``duplex_picker_realtime_client_secrets_total``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Counter(
            "duplex_engine_realtime_sessions_total", "WebSocket sessions accepted", registry=registry
        )
        self.active = Gauge("duplex_engine_realtime_active_sessions", "Live WebSocket sessions", registry=registry)
        self.errors = Counter(
            "duplex_engine_realtime_errors_total",
            "error events sent and connections refused, by error code",
            ["code"],
            registry=registry,
        )
        self.responses = Counter(
            "duplex_engine_realtime_responses_total",
            "Responses (model turns, backchannels, tool calls) by final status",
            ["status"],
            registry=registry,
        )
        self.bridge = Histogram(
            "duplex_engine_realtime_bridge_seconds",
            "The endpoint's own work per audio chunk: ingress = the WebSocket frame that completed a chunk was "
            "received -> its ClientEvent taken by the engine's session; egress = a ModelAudio event came from the "
            "session -> the frames carrying it written",
            ["direction"],
            buckets=BRIDGE_BUCKETS,
            registry=registry,
        )
        for direction in ("ingress", "egress"):
            self.bridge.labels(direction)  # both series exist (at zero) before the first chunk
