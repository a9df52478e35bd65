"""The Realtime endpoint's Prometheus metrics, on the gateway's registry (exported on its ``metrics_port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
