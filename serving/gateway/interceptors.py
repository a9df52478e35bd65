"""Server interceptors: auth (rejects before any handler runs) and metrics (counts every RPC's outcome)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..drain import drain_client
from ..metrics import GatewayMetrics
from .auth import KeyRing

_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Health and reflection stay unauthenticated (probes and tooling)."""

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def metadata_dict(metadata: Any) -> dict[str, str]:
    """Invocation metadata as a dict of str (binary values decoded)."""
    return {k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in (metadata or ())}


REFUSED_QUIET_S = 1.0
"""A pause this long in a refused caller's writes ends the discarding. Longer than ``drain.QUIET_S``: a caller
refused at its first message writes in a burst (no ``SessionReady`` paces it), and a burst over a shared,
congested connection stalls in flow control for longer than a real-time client pauses between chunks."""
REFUSED_DRAIN_MAX_S = 5.0
"""Longest a refused caller's writes are discarded before its UNAUTHENTICATED goes out regardless: it holds no
slot, only this handler, and a caller without a key should not be able to hold even that for long."""


def _deny(message: str, enter: Callable[[], None]) -> grpc.RpcMethodHandler:
    async def deny_stream(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        enter()

        # aborting a stream the client is still writing into surfaces on the client as INTERNAL in place of
        # our status (most of a hundred fast writers did): discard what it sends first (serving/drain.py)
        async def read() -> bytes | None:
            return await anext(request_iterator, None)

        await drain_client(read, lambda m: m is None, REFUSED_QUIET_S, REFUSED_DRAIN_MAX_S)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield b""  # pragma: no cover - abort raises; this makes the handler a response stream

    return grpc.stream_stream_rpc_method_handler(deny_stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call without an accepted key with UNAUTHENTICATED; ``enter`` is called in the refusing
    handler's task (the gateway's ``LiveHandlers.enter``, so a stop waits for it)."""

    def __init__(self, keys: KeyRing, metrics: GatewayMetrics, enter: Callable[[], None] = lambda: None) -> None:
        self.keys, self.metrics, self.enter = keys, metrics, enter

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method.startswith(_OPEN):
            return await continuation(details)
        why = self.keys.check(metadata_dict(details.invocation_metadata))
        if why is None:
            return await continuation(details)
        self.metrics.rpcs.labels(method, "UNAUTHENTICATED").inc()
        self.metrics.errors.labels("UNAUTHENTICATED").inc()
        return _deny(why, self.enter)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps stream-stream handlers (the relay) to time them and count their final status."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.stream_stream is None or not details.method.endswith("/Converse"):
            return handler
        inner = handler.stream_stream
        metrics, method = self.metrics, details.method

        async def observed(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.monotonic()
            metrics.active_streams.inc()
            code = "OK"
            try:
                async for ev in inner(request_iterator, context):
                    yield ev
            except BaseException:
                c = context.code()
                code = c.name if isinstance(c, grpc.StatusCode) else "CANCELLED"
                raise
            finally:
                metrics.active_streams.dec()
                c = context.code()
                if isinstance(c, grpc.StatusCode):
                    code = c.name
                metrics.rpcs.labels(method, code).inc()
                metrics.rpc_seconds.labels(method).observe(time.monotonic() - t0)
                if code != "OK":
                    metrics.errors.labels(code).inc()

        return grpc.stream_stream_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
