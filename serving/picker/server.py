"""The session picker's gRPC server: ``envoy.service.auth.v3.Authorization/Check`` (Envoy's ext_authz, called once per
``Duplex.Converse`` stream) and the standard health service (SERVING while an engine answers).

Its answer: allowed, with the chosen engine's HOST:PORT in ``REPLICA_HEADER`` (for a new session followed by the
next engines with room, which Envoy tries when it cannot connect to the first) and the caller's key id in
``x-duplex-key-id`` (both set, replacing whatever the client sent), or denied with the gRPC status the client gets
— UNAUTHENTICATED (no or a wrong key), RESOURCE_EXHAUSTED with ``retry-after-ms`` (the key's quotas, or every
replica full), UNAVAILABLE (no healthy replica). Its parts: ``KeyRing`` (``auth.py``, hashed keys), ``KeyQuotas``
(``quota.py``, per-key limits) and ``Router`` (``routing.py``, health and ``Replica.GetLoad`` reports); its
settings are the front door's (``GatewaySpec``). WebSocket upgrades of ``GET /v1/realtime`` and the picker's HTTP
app (client secrets, the page) are ``realtime.py``'s."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

import grpc
from google.protobuf.wrappers_pb2 import BoolValue
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from duplex.ext_authz.v3 import external_auth_pb2 as authz

from ..envoy.config import CONVERSE_PATH, REPLICA_HEADER, START_ATTEMPTS
from ..metrics import MetricsServer, PickerMetrics
from ..realtime.credentials import REALTIME_PATH
from ..resume_token import HOLDER_LOST_METADATA, KEY_ID_METADATA, PLACEMENT_METADATA, RESUME_REPLICA_METADATA
from ..spec import GatewaySpec
from .auth import KeyRing
from .placement import Placements, ranked, sessions_by_key
from .quota import KeyQuotas
from .realtime import RealtimeAuthz, RealtimeHttp
from .routing import Replica, Router

log = logging.getLogger(__name__)

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"

HTTP_FOR = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
"""HTTP status of a denial (what a non-gRPC client would see); gRPC clients read ``grpc-status``."""


def _grpc_message(text: str) -> str:
    """``grpc-message`` as the gRPC spec wants it: percent-encoded outside printable ASCII (and ``%``)."""
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _set(key: str, value: str) -> authz.HeaderValueOption:
    """Set ``key`` (replacing every value the request had): ``append`` false, OVERWRITE_IF_EXISTS_OR_ADD."""
    return authz.HeaderValueOption(
        header=authz.HeaderValue(key=key, value=value), append=BoolValue(value=False), append_action=2
    )


def allow(replica: str, key_id: str, placement: str = "resume", fallbacks: tuple[str, ...] = ()) -> authz.CheckResponse:
    """Allowed, to ``replica``, as ``key_id``; ``placement`` numbers a new session for the load reports (on a
    resume a value without a number, replacing any the client sent: its session is counted already).
    ``fallbacks``: the replicas Envoy tries next, in order, when it cannot connect to ``replica`` (a new
    session only: ``REPLICA_HEADER`` becomes ``replica,fallback,...``)."""
    headers = [
        _set(REPLICA_HEADER, ",".join((replica, *fallbacks))),
        _set(KEY_ID_METADATA, key_id),
        _set(PLACEMENT_METADATA, placement),
    ]
    return authz.CheckResponse(status=authz.RpcStatus(code=0), ok_response=authz.OkHttpResponse(headers=headers))


def deny(code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = ()) -> authz.CheckResponse:
    """A denial Envoy answers the stream with: ``grpc-status``/``grpc-message`` (and ``trailing``, e.g.
    ``retry-after-ms``) in its trailers-only response."""
    number = code.value[0]
    headers = [_set("grpc-status", str(number)), _set("grpc-message", _grpc_message(message))]
    headers += [_set(k, v) for k, v in trailing]
    return authz.CheckResponse(
        status=authz.RpcStatus(code=number, message=message),
        denied_response=authz.DeniedHttpResponse(
            status=authz.HttpStatus(code=HTTP_FOR.get(code, 403)), headers=headers, body=message
        ),
    )


class Picker:
    """The decision, once per session: key → quotas → replica."""

    def __init__(self, spec: GatewaySpec, keys: KeyRing, placements: Placements, metrics: PickerMetrics) -> None:
        self.spec, self.keys, self.placements, self.metrics = spec, keys, placements, metrics
        self.quotas = KeyQuotas(
            spec.key_max_sessions, spec.key_starts_per_s, spec.key_starts_burst, busy_retry_s=spec.retry_after_s
        )
        self.router = Router(
            spec.engines, spec.health_interval_s, spec.max_message_bytes, on_report=self._reported, watch_health=True
        )
        self.realtime = RealtimeAuthz(self)
        """WebSocket upgrades of ``GET /v1/realtime`` (``realtime.py``)."""

    def _reported(self, replica: Replica) -> None:
        self.placements.reported(replica.address, replica.placements_seen.get(self.placements.id, 0))

    def decide(self, path: str, headers: dict[str, str]) -> authz.CheckResponse:
        """The answer to one ``Check`` (no I/O: what the last reports and the placements since say)."""
        if path.partition("?")[0] == REALTIME_PATH:
            return self.realtime.decide(headers)
        if path != CONVERSE_PATH:
            return deny(grpc.StatusCode.PERMISSION_DENIED, f"{path}: only {CONVERSE_PATH} is served here")
        check = self.keys.identify(headers)
        if check.key_id is None:
            return deny(grpc.StatusCode.UNAUTHENTICATED, check.why or "invalid API key")
        key_id = check.key_id
        holder = headers.get(RESUME_REPLICA_METADATA, "")
        if holder:
            return self._resume(holder, key_id)
        self.quotas.live = sessions_by_key(self.router.replicas, self.placements)
        refusal = self.quotas.admit(key_id)
        if refusal is not None:
            return deny(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message, refusal.trailing_metadata())
        room = ranked(self.router.replicas, self.placements.pending())
        if not room:
            if not self.router.healthy_count():
                return deny(grpc.StatusCode.UNAVAILABLE, "no healthy engine replica; retry")
            ms = int(self.spec.retry_after_s * 1000)
            used, cap = self.router.total_capacity()
            return deny(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all engine replicas are full ({used}/{cap} sessions); retry after {ms} ms",
                (("retry-after-ms", str(ms)),),
            )
        # the placement counts on the first; an engine Envoy cannot reach (died before the picker saw it) sends
        # the stream to the next listed one, whose next load report counts it there
        replica, fallbacks = room[0], tuple(r.address for r in room[1:START_ATTEMPTS])
        placement = self.placements.add(replica.address, key_id)
        self.metrics.placed.labels(replica.address).inc()
        return allow(replica.address, key_id, placement, fallbacks)

    def _resume(self, holder: str, key_id: str) -> authz.CheckResponse:
        """A resume goes to the replica holding its session (its slot is already counted there); the engine
        checks the token and the key it is bound to. UNAVAILABLE with ``HOLDER_LOST_METADATA`` when that
        replica is down or unknown: the session is gone with it."""
        replica = next((r for r in self.router.replicas if r.address == holder), None)
        if replica is None or not replica.healthy:
            why = "is not one of this picker's replicas" if replica is None else "is not healthy"
            return deny(
                grpc.StatusCode.UNAVAILABLE,
                f"{RESUME_REPLICA_METADATA}: engine replica {holder!r} holding the session {why}",
                (HOLDER_LOST_METADATA,),
            )
        return allow(replica.address, key_id)

    async def Check(self, request: authz.CheckRequest, context: grpc.aio.ServicerContext) -> authz.CheckResponse:
        http = request.attributes.request.http
        answer = self.decide(http.path, dict(http.headers))
        code = grpc.StatusCode.OK if answer.status.code == 0 else _code_name(answer.status.code)
        self.metrics.checks.labels(code.name).inc()
        if answer.status.code:
            log.info("session refused: %s %s", code.name, answer.status.message)
        return answer


def _code_name(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


class PickerServer:
    """The picker's gRPC server on ``spec.host``:``bind_port`` (0 = any free port), metrics on
    ``spec.metrics_port``."""

    def __init__(
        self,
        spec: GatewaySpec,
        bind_port: int = 0,
        placements: Placements | None = None,
        http_bind_port: int | None = None,
        bind_host: str = "",
    ) -> None:
        """``http_bind_port`` overrides ``spec.http_port`` (0 = any free port; without an override a
        ``spec.http_port`` of 0 means no HTTP app: client secrets, the page's config, the page); ``bind_host``
        overrides ``spec.host`` for the gRPC server and the HTTP app (Envoy's pod partner binds loopback only)."""
        if not spec.engines and not spec.engine_selector:
            raise ValueError("picker: no engines configured (engines: [HOST:PORT, ...], or engine_selector)")
        self.spec, self.bind_port = spec, bind_port
        self.bind_host = bind_host or spec.host
        self.metrics = PickerMetrics()
        self.picker = Picker(
            spec, KeyRing.from_file(spec.api_keys_file, spec.open_access), placements or Placements(), self.metrics
        )
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.http_bind_port = http_bind_port if http_bind_port is not None else (spec.http_port or None)
        self.http_port = 0
        """Bound port of the HTTP app (0 = not served)."""
        self.http = RealtimeHttp(self.picker.realtime)
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        check = grpc.unary_unary_rpc_method_handler(
            self.picker.Check,
            request_deserializer=authz.CheckRequest.FromString,
            response_serializer=authz.CheckResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(AUTHZ_SERVICE, {"Check": check}),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.port = server.add_insecure_port(f"{self.bind_host}:{self.bind_port}")
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if not self.port:
            raise OSError(f"picker: cannot bind {self.bind_host}:{self.bind_port}")
        await self.picker.router.start()
        await server.start()
        self._server = server
        if self.http_bind_port is not None:
            try:
                self.http_port = await self.http.start(self.bind_host, self.http_bind_port)
            except OSError:
                await self.stop(0)
                raise
        self._metrics = MetricsServer(self.metrics.registry, self.spec.host, self.spec.metrics_port)
        self._health_task = asyncio.create_task(self._track_health())
        log.info(
            "picker on %s:%d → %s",
            self.bind_host,
            self.port,
            ", ".join(self.spec.engines) or f"the EndpointSlices {self.spec.engine_selector}",
        )
        return self.port

    async def _track_health(self) -> None:
        """SERVING while some engine replica answers (checked every ``health_interval_s``)."""
        while True:
            healthy = self.picker.router.healthy_count()
            self.metrics.replicas_healthy.set(healthy)
            serving = health_pb2.HealthCheckResponse.SERVING
            await self.health.set("", serving if healthy else health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(self.spec.health_interval_s)

    async def stop(self, grace: float = 1.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        await self.http.stop()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
        await self.picker.router.close()
        if self._metrics is not None:
            self._metrics.close()
