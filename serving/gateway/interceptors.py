"""Server interceptors: auth (rejects before any handler runs) and metrics (counts every RPC's outcome)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..metrics import GatewayMetrics
from .auth import KeyRing

_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Health and reflection stay unauthenticated (probes and tooling)."""

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def metadata_dict(metadata: Any) -> dict[str, str]:
    """Invocation metadata as a dict of str (binary values decoded)."""
    return {k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in (metadata or ())}


def _deny(message: str) -> grpc.RpcMethodHandler:
    async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        # take the client's first message before answering: aborting a stream the client is still
        # writing into can surface on the client as INTERNAL instead of our status
        async for _ in request_iterator:
            break
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield b""  # pragma: no cover - abort raises; this makes the handler a response stream

    return grpc.stream_stream_rpc_method_handler(deny_stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyRing, metrics: GatewayMetrics) -> None:
        self.keys, self.metrics = keys, metrics

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
        return _deny(why)


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
