"""The Realtime endpoint's Prometheus metrics, on the gateway's registry (exported on its ``metrics_port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BRIDGE_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 0.01, 0.02, 0.05, 0.1)
"""The bridge's own work per chunk is well under a millisecond on an idle core: buckets from 50 µs."""


class RealtimeMetrics:
    """Names prefixed ``duplex_gateway_realtime_``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Counter(
            "duplex_gateway_realtime_sessions_total",
            "WebSocket sessions accepted, by credential (key, client_secret, open)",
            ["auth"],
            registry=registry,
        )
        self.active = Gauge("duplex_gateway_realtime_active_sessions", "Live WebSocket sessions", registry=registry)
        self.errors = Counter(
            "duplex_gateway_realtime_errors_total",
            "error events sent and connections refused, by error code",
            ["code"],
            registry=registry,
        )
        self.client_secrets = Counter(
            "duplex_gateway_realtime_client_secrets_total", "Client secrets minted", registry=registry
        )
        self.responses = Counter(
            "duplex_gateway_realtime_responses_total",
            "Responses (model turns, backchannels, tool calls) by final status",
            ["status"],
            registry=registry,
        )
        self.bridge = Histogram(
            "duplex_gateway_realtime_bridge_seconds",
            "The endpoint's own work per audio chunk: ingress = the WebSocket frame that completed a chunk was "
            "received -> its ClientEvent handed to the Converse relay; egress = a ModelAudio event came from the "
            "relay -> the frames carrying it written",
            ["direction"],
            buckets=BRIDGE_BUCKETS,
            registry=registry,
        )
        for direction in ("ingress", "egress"):
            self.bridge.labels(direction)  # both series exist (at zero) before the first chunk
