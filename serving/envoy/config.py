"""Envoy's bootstrap for ``duplex up``: one listener (HTTP/2 gRPC) that routes ``Duplex.Converse`` to the
``engines`` cluster, after the ``ext_authz`` filter asked the session picker (a gRPC service, fail-closed)
whether the stream may start and on which engine. The picker answers with the engine's address in
``REPLICA_HEADER``; the cluster's ``override_host`` load-balancing policy sends the stream there, among the
endpoints the cluster already has (the EDS file): no header can send traffic to an address the file does not
list. The picker's health service is reachable through the listener too (``grpc.health.v1.Health``, no key)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..resume_token import RESUME_REPLICA_METADATA

REPLICA_HEADER = "x-duplex-replica"
"""Request header the picker sets (overwriting any value the client sent) to the chosen engine's HOST:PORT; for a
new session, ``HOST:PORT,HOST:PORT,...``: the engines to try in order (``START_ATTEMPTS`` at most)."""
START_ATTEMPTS = 3
"""Engines a new session's stream is tried on: Envoy retries the start on the next engine the picker listed when
the connection to one fails or is refused before the engine saw the request (an engine that died an instant
before the picker noticed). A resume is tried on its holder only."""
START_BUFFER_BYTES = 64 * 1024
"""Request bytes Envoy keeps of a new session's stream for a retry of its start (about 2 s of 16 kHz audio);
past that the stream goes on without a retry."""
ENGINES_CLUSTER = "engines"
PICKER_CLUSTER = "picker"
REALTIME_CLUSTER = "realtime"
PICKER_HTTP_CLUSTER = "picker_http"
REALTIME_PATH = "/v1/realtime"
LISTENER = "duplex"
REALTIME_LISTENER = "realtime"
CONVERSE_PATH = "/duplex.v1.Duplex/Converse"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
PICKER_UNREACHABLE = "session picker unreachable: new sessions are refused until it is back; retry"
"""grpc-message of the UNAVAILABLE a client gets when Envoy cannot ask the picker (fail-closed)."""

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_OVERRIDE_HOST = "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost"
_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_LEAST_REQUEST = "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
_MAX_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_NODELAY = {"level": 6, "name": 1, "int_value": 1, "state": "STATE_PREBIND"}
"""IPPROTO_TCP (6), TCP_NODELAY (1) = 1."""
_CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass(frozen=True)
class EnvoyConfig:
    """What ``duplex up`` tells Envoy; the defaults are the ones it uses."""

    picker: str
    """HOST:PORT of the session picker (ext_authz gRPC service)."""
    eds_path: Path
    """The engines' endpoint file (``eds.write_endpoints``); its directory is watched for a renamed-in file."""
    host: str = "127.0.0.1"
    port: int = 8080
    """Listener port (0 = any free port; ``EnvoyProcess`` reads the bound one from the admin API)."""
    admin_host: str = "127.0.0.1"
    stream_idle_timeout_s: float = 300.0
    """A stream with no frame either way for this long is reset; a live conversation sends a chunk every
    chunk_ms, so none comes near it."""
    keepalive_interval_s: float = 20.0
    """HTTP/2 PING interval on client and engine connections (a dead peer is found within interval + timeout)."""
    keepalive_timeout_s: float = 10.0
    picker_timeout_s: float = 2.0
    """Longest Envoy waits for the picker's answer; past it (or with the picker down) the stream is refused."""
    max_streams: int = 100_000
    """Circuit-breaker limits of the engines cluster (the engines' own caps are the real limit)."""
    max_connections: int = 10_000
    """Downstream connections Envoy accepts at once (its overload manager closes more)."""
    realtime: str = ""
    """HOST:PORT of the session picker's HTTP app (client secrets, the page's config, the page); "" = no
    Realtime listener. When set, a second listener (``realtime_port``, HTTP/1.1) carries ``GET /v1/realtime``
    WebSocket upgrades to the engines' Realtime ports (after ``ext_authz``, as ``Converse``) and every other
    path to this address."""
    realtime_port: int = 0
    """The Realtime listener's port (0 = any free port)."""
    realtime_eds_path: Path | None = None
    """The engines' Realtime WebSocket endpoint file (``eds.write_endpoints`` with ``REALTIME_CLUSTER``);
    needed with ``realtime``."""
    tls_cert_file: str | None = None
    """PEM certificate chain: with ``tls_key_file``, the listeners serve TLS (Envoy terminates it)."""
    tls_key_file: str | None = None
    client_ca_file: str | None = None
    """PEM CA bundle: with TLS set, a client must present a certificate this CA signed (mutual TLS)."""


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _keepalive(cfg: EnvoyConfig) -> dict[str, Any]:
    return {
        "connection_keepalive": {
            "interval": _duration(cfg.keepalive_interval_s),
            "timeout": _duration(cfg.keepalive_timeout_s),
        }
    }


def _h2_upstream(cfg: EnvoyConfig) -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": _keepalive(cfg)},
        }
    }


def _downstream_tls(cfg: EnvoyConfig, alpn: list[str]) -> dict[str, Any]:
    """The listener's TLS (``transport_socket``), with a required client certificate when ``client_ca_file``."""
    assert cfg.tls_cert_file and cfg.tls_key_file
    common: dict[str, Any] = {
        "tls_certificates": [
            {"certificate_chain": {"filename": cfg.tls_cert_file}, "private_key": {"filename": cfg.tls_key_file}}
        ],
        "alpn_protocols": alpn,
    }
    context: dict[str, Any] = {"@type": _TLS, "common_tls_context": common}
    if cfg.client_ca_file:
        common["validation_context"] = {"trusted_ca": {"filename": cfg.client_ca_file}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _filter_chain(cfg: EnvoyConfig, hcm: dict[str, Any], alpn: list[str]) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if cfg.tls_cert_file and cfg.tls_key_file:
        chain["transport_socket"] = _downstream_tls(cfg, alpn)
    return chain


def _ext_authz(cfg: EnvoyConfig) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _EXT_AUTHZ,
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": PICKER_CLUSTER},
                "timeout": _duration(cfg.picker_timeout_s),
            },
            "failure_mode_allow": False,
            # 502, not 503: ``_local_reply`` tells the picker unreachable from the picker's own UNAVAILABLE
            # denials (HTTP 503: no healthy engine, a resume's holder lost), which keep their message
            "status_on_error": {"code": "BadGateway"},
            # only what the picker decides on travels to it
            "allowed_headers": {
                "patterns": [{"exact": "authorization"}, {"exact": "x-api-key"}, {"exact": RESUME_REPLICA_METADATA}]
            },
        },
    }


def _start_retry() -> dict[str, Any]:
    """A new session's start, retried on the next engine the picker listed (``override_host`` takes the next
    address of ``REPLICA_HEADER`` on each attempt) when its connection failed or was reset before the request
    went out, or the engine refused the stream: the engine never saw it, so nothing runs twice. Past the list,
    the fallback policy picks among the endpoints, never one already tried."""
    return {
        "retry_on": "connect-failure,reset,refused-stream",
        "num_retries": START_ATTEMPTS - 1,
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.050s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def _routes() -> list[dict[str, Any]]:
    no_authz = {"envoy.filters.http.ext_authz": {"@type": _EXT_AUTHZ_PER_ROUTE, "disabled": True}}
    # timeout 0s: a conversation lasts as long as it lasts (stream_idle_timeout still applies)
    return [
        {
            # a resume: to the engine holding the session, never retried elsewhere (the session is there only)
            "match": {
                "path": CONVERSE_PATH,
                "grpc": {},
                "headers": [{"name": RESUME_REPLICA_METADATA, "present_match": True}],
            },
            "route": {"cluster": ENGINES_CLUSTER, "timeout": "0s"},
        },
        {
            "match": {"path": CONVERSE_PATH, "grpc": {}},
            "route": {"cluster": ENGINES_CLUSTER, "timeout": "0s", "retry_policy": _start_retry()},
            "request_body_buffer_limit": START_BUFFER_BYTES,
        },
        {
            "match": {"prefix": HEALTH_PREFIX, "grpc": {}},
            "route": {"cluster": PICKER_CLUSTER, "timeout": "5s"},
            "typed_per_filter_config": no_authz,
        },
    ]


def _local_reply() -> dict[str, Any]:
    """The picker unreachable (ext_authz's ``status_on_error`` 502, flag UAEX) gets a message: a gRPC client
    reads it as UNAVAILABLE with ``PICKER_UNREACHABLE`` as its details."""
    return {
        "mappers": [
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 502}}}},
                            {"response_flag_filter": {"flags": ["UAEX"]}},
                        ]
                    }
                },
                "body": {"inline_string": PICKER_UNREACHABLE},
            }
        ]
    }


def _listener(cfg: EnvoyConfig) -> dict[str, Any]:
    hcm = {
        "@type": _HCM,
        "stat_prefix": "duplex",
        "codec_type": "AUTO",
        "stream_idle_timeout": _duration(cfg.stream_idle_timeout_s),
        "http2_protocol_options": _keepalive(cfg),
        "route_config": {
            "name": "duplex",
            "virtual_hosts": [{"name": "duplex", "domains": ["*"], "routes": _routes()}],
        },
        "local_reply_config": _local_reply(),
        "http_filters": [_ext_authz(cfg), {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": LISTENER,
        "address": _socket(cfg.host, cfg.port),
        # TCP_NODELAY on the listening socket (accepted client connections inherit it): a chunk written to a
        # client is never held back behind an unacknowledged one (Nagle)
        "socket_options": [_NODELAY],
        "filter_chains": [_filter_chain(cfg, hcm, ["h2"])],
    }


def _realtime_ext_authz(cfg: EnvoyConfig) -> dict[str, Any]:
    """As ``_ext_authz``, with the headers a WebSocket client's credential travels in."""
    f = _ext_authz(cfg)
    f["typed_config"]["allowed_headers"] = {
        "patterns": [{"exact": "authorization"}, {"exact": "sec-websocket-protocol"}]
    }
    f["typed_config"]["status_on_error"] = {"code": "ServiceUnavailable"}  # an HTTP client reads 503
    return f


def _realtime_listener(cfg: EnvoyConfig) -> dict[str, Any]:
    """HTTP/1.1: ``GET /v1/realtime`` WebSocket upgrades, asked of the picker (``ext_authz``), to the engine it
    names (``override_host`` over the ``realtime`` cluster); every other path to the picker's HTTP app."""
    no_authz = {"envoy.filters.http.ext_authz": {"@type": _EXT_AUTHZ_PER_ROUTE, "disabled": True}}
    routes = [
        {
            "match": {"path": REALTIME_PATH},
            # as a new gRPC session's start: retried on the next engine the picker listed when the connection to
            # one fails or is reset before its answer (the upgrade request has no body to keep)
            "route": {
                "cluster": REALTIME_CLUSTER,
                "timeout": "0s",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
                "retry_policy": _start_retry(),
            },
        },
        {
            "match": {"prefix": "/"},
            "route": {"cluster": PICKER_HTTP_CLUSTER, "timeout": "15s"},
            "typed_per_filter_config": no_authz,
        },
    ]
    hcm = {
        "@type": _HCM,
        "stat_prefix": "realtime",
        "codec_type": "HTTP1",
        "stream_idle_timeout": _duration(cfg.stream_idle_timeout_s),
        "route_config": {
            "name": "realtime",
            "virtual_hosts": [{"name": "realtime", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            _realtime_ext_authz(cfg),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
    }
    return {
        "name": REALTIME_LISTENER,
        "address": _socket(cfg.host, cfg.realtime_port),
        "socket_options": [_NODELAY],
        "filter_chains": [_filter_chain(cfg, hcm, ["http/1.1"])],
    }


def _realtime_clusters(cfg: EnvoyConfig) -> list[dict[str, Any]]:
    """The engines' Realtime WebSocket ports (EDS, ``override_host`` as the engines cluster, HTTP/1.1) and
    the picker's HTTP app."""
    if cfg.realtime_eds_path is None:
        raise ValueError("envoy: realtime_eds_path is needed with realtime")
    ws = _engines_cluster(cfg)
    del ws["typed_extension_protocol_options"]  # HTTP/1.1 (WebSocket upgrades), not HTTP/2
    ws["name"] = REALTIME_CLUSTER
    ws["eds_cluster_config"]["eds_config"]["path_config_source"] = {
        "path": str(cfg.realtime_eds_path),
        "watched_directory": {"path": str(cfg.realtime_eds_path.parent)},
    }
    host, port = cfg.realtime.rsplit(":", 1)
    page = {
        "name": PICKER_HTTP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": PICKER_HTTP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, int(port))}}]}],
        },
    }
    return [ws, page]


def _engines_cluster(cfg: EnvoyConfig) -> dict[str, Any]:
    least_request = {
        "typed_extension_config": {
            "name": "envoy.load_balancing_policies.least_request",
            "typed_config": {"@type": _LEAST_REQUEST},
        }
    }
    limit = cfg.max_streams
    return {
        "name": ENGINES_CLUSTER,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(cfg.eds_path),
                    "watched_directory": {"path": str(cfg.eds_path.parent)},
                },
            }
        },
        "typed_extension_protocol_options": _h2_upstream(cfg),
        "circuit_breakers": {
            # max_retries: starts retried at once after an engine died (Envoy's default of 3 would refuse the rest)
            "thresholds": [
                {"max_connections": limit, "max_pending_requests": limit, "max_requests": limit, "max_retries": limit}
            ]
        },
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": {
                            "@type": _OVERRIDE_HOST,
                            "override_host_sources": [{"header": REPLICA_HEADER}],
                            "fallback_policy": {"policies": [least_request]},
                        },
                    }
                }
            ]
        },
    }


def _picker_cluster(cfg: EnvoyConfig) -> dict[str, Any]:
    host, port = cfg.picker.rsplit(":", 1)
    return {
        "name": PICKER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _h2_upstream(cfg),
        "load_assignment": {
            "cluster_name": PICKER_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, int(port))}}]}],
        },
    }


def bootstrap(cfg: EnvoyConfig) -> dict[str, Any]:
    """The whole bootstrap (admin on a free port of ``admin_host``: its address goes to a file)."""
    return {
        "node": {"id": "duplex-up", "cluster": "duplex"},  # a file-based EDS source wants both
        "admin": {"address": _socket(cfg.admin_host, 0)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _MAX_CONNECTIONS,
                        "max_active_downstream_connections": cfg.max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [_listener(cfg)] + ([_realtime_listener(cfg)] if cfg.realtime else []),
            "clusters": [_engines_cluster(cfg), _picker_cluster(cfg)]
            + (_realtime_clusters(cfg) if cfg.realtime else []),
        },
    }


def endpoints(addresses: list[str], version: str, cluster: str = ENGINES_CLUSTER) -> dict[str, Any]:
    """An EDS file's content: a DiscoveryResponse with ``cluster``'s endpoints (HOST:PORT each)."""
    lb = []
    for addr in addresses:
        host, port = addr.rsplit(":", 1)
        lb.append({"endpoint": {"address": _socket(host, int(port))}})
    return {
        "version_info": version,
        "resources": [{"@type": _CLA, "cluster_name": cluster, "endpoints": [{"lb_endpoints": lb}]}],
    }
