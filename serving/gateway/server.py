"""The gateway's gRPC server: authenticated front door that relays each conversation, byte for byte, to the
least-loaded engine replica (the engine validates the messages; the gateway never parses audio)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from duplex.v1 import duplex_pb2 as pb

from ..drain import drain_client
from ..heap import freeze_startup_heap
from ..metrics import GatewayMetrics, MetricsServer
from ..resume_token import HOLDER_LOST_METADATA, KEY_ID_METADATA, RESUMABLE_METADATA, unwrap, wrap
from ..spec import GatewaySpec
from .auth import KeyRing
from .interceptors import AuthInterceptor, MetricsInterceptor, metadata_dict
from .pump import ClientPump
from .quota import KeyQuotas
from .routing import Replica, Router

log = logging.getLogger(__name__)

SERVICE = "duplex.v1.Duplex"
METHOD = f"/{SERVICE}/Converse"


class Refused(Exception):
    """Admission refused a new conversation: the gRPC status to answer, its message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.trailing = code, message, trailing


def _read_pem(field: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"gateway: {field} {path!r} cannot be read: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"gateway: {field} {path!r} is not PEM (no '-----BEGIN' line)")
    return data


def load_tls(spec: GatewaySpec) -> grpc.ServerCredentials | None:
    """Server credentials from ``tls_cert_file`` + ``tls_key_file`` (+ ``client_ca_file``: mutual TLS); None
    (plaintext) when none is set. Raises ValueError naming the field when only one is set or a file is
    unreadable or not PEM."""
    cert_file, key_file = spec.tls_cert_file, spec.tls_key_file
    if spec.client_ca_file and not (cert_file and key_file):
        raise ValueError("gateway: client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file set too")
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        have, missing = ("tls_cert_file", "tls_key_file") if cert_file else ("tls_key_file", "tls_cert_file")
        raise ValueError(
            f"gateway: {have} is set but {missing} is not; set both tls_cert_file and tls_key_file "
            "to serve TLS, or neither for plaintext"
        )
    cert = _read_pem("tls_cert_file", cert_file)
    key = _read_pem("tls_key_file", key_file)
    if spec.client_ca_file:
        client_ca = _read_pem("client_ca_file", spec.client_ca_file)
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


async def _refuse(
    it: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    trailing: tuple[tuple[str, str], ...] = (),
) -> None:
    """Abort with ``code`` once the client stopped writing (``serving/drain.py``: else it may see INTERNAL)."""
    await drain_client(lambda: anext(it, None), lambda m: m is None)
    await context.abort(code, message, trailing_metadata=trailing)


STOP_UNWIND_S = 5.0
"""Longest ``stop`` waits, after grpc ended the calls, for their handlers to finish unwinding."""


class LiveHandlers:
    """The tasks running this server's RPC handlers. grpc's ``server.stop`` returns once the calls are over,
    while their handler tasks may still be unwinding; a process that then ends its event loop cancels grpc's
    own task waiting on each (``_schedule_rpc_coro``), which logs a ``CancelledError`` traceback per live
    stream. ``stop`` waits for these tasks first."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()

    def enter(self) -> None:
        """Called first thing in a handler: track the task it runs in until it is done."""
        task = asyncio.current_task()
        if task is not None and task not in self.tasks:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def wait(self, timeout: float) -> int:
        """Wait until every tracked handler is done, at most ``timeout`` s; how many are still running."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return len(pending)


class GatewayServer:
    def __init__(
        self,
        spec: GatewaySpec,
        keys: KeyRing | None = None,
        bind_port: int | None = None,
    ) -> None:
        """``bind_port`` overrides ``spec.port`` (0 = any free port)."""
        self.spec = spec
        self.keys = keys if keys is not None else KeyRing.from_file(spec.api_keys_file, spec.open_access)
        self.bind_port = spec.port if bind_port is None else bind_port
        self.quotas = KeyQuotas(
            spec.key_max_sessions, spec.key_starts_per_s, spec.key_starts_burst, busy_retry_s=spec.retry_after_s
        )
        self.metrics = GatewayMetrics()
        self.health = health.aio.HealthServicer()
        self.router = Router(spec.engines, spec.health_interval_s, spec.max_message_bytes)
        self.port = 0
        self.draining = False
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.handlers = LiveHandlers()

    async def start(self) -> int:
        if not self.spec.engines:
            raise ValueError("gateway: no engines configured (engines: [HOST:PORT, ...])")
        credentials = load_tls(self.spec)
        server = grpc.aio.server(
            interceptors=(
                AuthInterceptor(self.keys, self.metrics, self.handlers.enter),
                MetricsInterceptor(self.metrics),
            ),
            options=[
                ("grpc.max_receive_message_length", self.spec.max_message_bytes),
                ("grpc.max_send_message_length", self.spec.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.stream_stream_rpc_method_handler(self.converse)  # raw bytes both ways
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Converse": handler}),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        addr = f"{self.spec.host}:{self.bind_port}"  # health and reflection share the port (and its TLS)
        try:
            if credentials is not None:
                self.port = server.add_secure_port(addr, credentials)
            else:
                self.port = server.add_insecure_port(addr)
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if not self.port:
            raise OSError(f"gateway: cannot bind {self.spec.host}:{self.bind_port}")
        await self.router.start()
        await server.start()
        self._server = server
        self._metrics_server = MetricsServer(self.metrics.registry, self.spec.host, self.spec.metrics_port)
        self._health_task = asyncio.create_task(self._track_health())
        frozen = freeze_startup_heap()  # see heap.py
        log.info(
            "gateway on %s:%d (%s) → %s; %d objects frozen",
            self.spec.host,
            self.port,
            ("mutual TLS" if self.spec.client_ca_file else "TLS") if credentials is not None else "plaintext, no TLS",
            ", ".join(self.spec.engines),
            frozen,
        )
        return self.port

    async def _track_health(self) -> None:
        while self._server is not None and not self.draining:
            ok = self.router.healthy_count() > 0
            self.metrics.replicas_healthy.set(self.router.healthy_count())
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE):
                await self.health.set(name, status)
            await asyncio.sleep(self.spec.health_interval_s)

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown: refuse new conversations, let live ones finish for ``grace`` s, then stop."""
        grace = self.spec.drain_grace_s if grace is None else grace
        self.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("gateway draining: %d live conversation(s), up to %.0f s", self.active, grace)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("gateway drain: %d conversation(s) still live after %.0f s; cancelling", self.active, grace)
        await self.stop(0.5)

    async def stop(self, grace: float = 1.0) -> None:
        self.draining = True
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
            if left := await self.handlers.wait(STOP_UNWIND_S):
                log.warning("gateway stop: %d handler(s) still unwinding after %.0f s", left, STOP_UNWIND_S)
        await self.router.close()
        if self._health_task is not None:
            self._health_task.cancel()
        if self._metrics_server is not None:
            self._metrics_server.close()

    def admit(self, key_id: str, pinned: Replica | None = None) -> Replica:
        """Admission for one new conversation of the caller holding ``key_id``: the replica it goes to (counted
        as open on it and against the key's quotas), or ``Refused`` with the status to answer (draining, the
        key's session quota or start rate, no healthy replica, every replica full). A resume is ``pinned`` to
        the replica holding its session (whose slot it already has)."""
        if self.draining:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "gateway is draining (shutting down); reconnect")
        refusal = self.quotas.admit(key_id)
        if refusal is not None:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message, refusal.trailing_metadata())
        if pinned is not None:
            if not pinned.healthy:
                self.quotas.release(key_id)
                raise Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    f"start.resume_token: engine replica {pinned.address} holding the session is not healthy",
                    (HOLDER_LOST_METADATA,),
                )
            pinned.open += 1
            return pinned
        replica = self.router.pick()
        if replica is not None:
            return replica
        self.quotas.release(key_id)
        if not self.router.healthy_count():
            raise Refused(grpc.StatusCode.UNAVAILABLE, "no healthy engine replica")
        used, cap = self.router.total_capacity()
        ms = int(self.spec.retry_after_s * 1000)
        raise Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"all engine replicas are full ({used}/{cap} sessions); retry after {ms} ms",
            (("retry-after-ms", str(ms)),),
        )

    async def relay(
        self,
        first: bytes,
        rest: AsyncIterator[bytes],
        key_id: str,
        drain_on_error: bool = False,
        resumable: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        """One conversation through admission and routing: ``first`` (the SessionStart) and ``rest`` go to the
        chosen replica byte for byte, its server events come back. Raises ``Refused`` before anything is sent,
        and the replica's ``grpc.aio.AioRpcError`` if the conversation ends with an error — after discarding
        what the client still writes when ``drain_on_error`` (a gRPC client could otherwise see INTERNAL
        instead of that status: ``serving/drain.py``). ``resumable=False``: the caller cannot resume (no
        token; the engine frees the slot as soon as the stream ends)."""
        first, pinned = self._route_resume(first)
        replica = self.admit(key_id, pinned)
        self.active += 1
        self._idle.clear()
        t0 = time.monotonic()
        pump = ClientPump(first, rest)
        metadata = ((KEY_ID_METADATA, key_id),) + (() if resumable else ((RESUMABLE_METADATA, "0"),))
        call = replica.channel.stream_stream(METHOD)(pump.messages(), metadata=metadata)
        try:
            answered = False
            while True:
                try:
                    async for raw in call:
                        if not answered:  # the SessionReady: its token gets the replica's address
                            answered = True
                            raw = self._wrap_token(raw, replica)
                        yield raw
                    break
                except grpc.aio.AioRpcError as e:
                    call.cancel()
                    lost = e.code() == grpc.StatusCode.UNAVAILABLE  # the replica died or is shutting down
                    if lost:
                        self.router.mark_down(replica, e.details() or "")
                        # it had only the SessionStart (and is no resume, which must reach its holder): start over
                        fresh = not answered and pinned is None and pump.relayed == 1
                        other = self.router.pick() if fresh else None
                        if other is not None:
                            log.info(
                                "replica %s lost before it answered; retrying on %s", replica.address, other.address
                            )
                            self.router.release(replica)
                            pump.detach()
                            replica = other
                            call = replica.channel.stream_stream(METHOD)(pump.messages(), metadata=metadata)
                            continue
                    if drain_on_error:
                        await (pump.settle() if lost else pump.drain())
                    raise
        finally:
            call.cancel()
            pump.close()
            self.router.release(replica)
            self.quotas.release(key_id)
            self.active -= 1
            if not self.active:
                self._idle.set()
            log.debug("relay to %s ended after %.1f s", replica.address, time.monotonic() - t0)

    def _route_resume(self, first: bytes) -> tuple[bytes, Replica | None]:
        """A resume's SessionStart with the engine's own token, and the replica its token names (None: not a
        resume; bytes that do not parse are relayed as they are, for the engine to answer)."""
        try:
            event = pb.ClientEvent.FromString(first)
        except Exception:  # protobuf's DecodeError: the engine names the problem
            return first, None
        if not event.HasField("start") or not event.start.resume_token:
            return first, None
        try:
            address, engine_token = unwrap(event.start.resume_token)
        except ValueError as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        for replica in self.router.replicas:
            if replica.address == address:
                event.start.resume_token = engine_token
                return event.SerializeToString(), replica
        raise Refused(
            grpc.StatusCode.NOT_FOUND,
            f"start.resume_token: names engine replica {address!r}, which this gateway does not route to",
        )

    @staticmethod
    def _wrap_token(raw: bytes, replica: Replica) -> bytes:
        event = pb.ServerEvent.FromString(raw)
        if not event.HasField("ready") or not event.ready.resume_token:
            return raw
        event.ready.resume_token = wrap(replica.address, event.ready.resume_token)
        return event.SerializeToString()

    async def converse(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        self.handlers.enter()
        await context.send_initial_metadata(())  # the call is accepted: the client sends its SessionStart
        it = aiter(requests)
        first = await anext(it, None)  # the SessionStart, relayed as is (answering before reading it can
        if first is None:  # reach the client as INTERNAL instead of our status)
            return
        key_id = self.keys.identify(metadata_dict(context.invocation_metadata())).key_id or ""
        try:
            async with contextlib.aclosing(self.relay(first, it, key_id, drain_on_error=True)) as events:
                async for raw in events:
                    yield raw
        except Refused as e:
            await _refuse(it, context, e.code, e.message, e.trailing)
        except grpc.aio.AioRpcError as e:
            # grpc takes a tuple of pairs here, not the aio Metadata object the failed call carries
            await context.abort(e.code(), e.details() or "", trailing_metadata=tuple(e.trailing_metadata() or ()))
