"""The engine's Realtime WebSocket endpoint (aiohttp, on the engine's own event loop): ``GET /v1/realtime``, one
conversation per WebSocket (``session.RealtimeSession``), run in-process on the engine.

It checks no key of its own, exactly as the engine's gRPC port: it sits behind Envoy, whose ``ext_authz`` call
to the session picker checked the key or client secret, the key's quotas and the placement, and set the
headers it trusts — ``x-duplex-key-id`` (quotas count the session against it), ``x-duplex-placement`` (the
picker's placement number, reported back in ``Replica.GetLoad``) and ``x-duplex-realtime-session`` (the
settings a client secret carried). A refusal (engine full, a bad start, draining) is an ``error`` event naming
what was wrong, then the close code of its status (``session.CLOSE_CODES``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..resume_token import KEY_ID_METADATA, PLACEMENT_METADATA
from ..web.listen import listen
from .credentials import REALTIME_PATH, SESSION_HEADER, SUBPROTOCOL, decode_settings
from .host import ConversationHost
from .metrics import RealtimeMetrics
from .protocol import ClientError, EventFactory
from .session import RealtimeSession, close_reason

log = logging.getLogger(__name__)


class RealtimeEndpoint:
    """``GET /v1/realtime`` for one engine (``host``), its metrics on ``registry``. ``bridge_clock`` and
    ``clock`` (monotonic seconds) go to each new session: its bridge timing and its lifecycle."""

    def __init__(
        self,
        host: ConversationHost,
        registry: CollectorRegistry,
        max_frame_bytes: int,
        bridge_clock: Callable[[], float] = time.perf_counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.max_frame_bytes = host, max_frame_bytes
        self.bridge_clock, self.clock = bridge_clock, clock
        self.metrics = RealtimeMetrics(registry)
        self.sessions: set[RealtimeSession] = set()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(REALTIME_PATH, self.websocket)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0 = any free port); the bound port."""
        self._runner, bound = await listen(self.app(), host, port, "engine")
        log.info("realtime endpoint on %s:%d (%s)", host, bound, REALTIME_PATH)
        return bound

    async def close_sessions(self) -> int:
        """Close every live WebSocket with 1001 (going away); how many."""
        sessions = list(self.sessions)
        await asyncio.gather(*(s.ws.close(code=1001, message=b"engine shutting down") for s in sessions))
        return len(sessions)

    async def stop(self) -> None:
        await self.close_sessions()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _refuse(self, ws: web.WebSocketResponse, code: str, message: str, close: int) -> web.WebSocketResponse:
        self.metrics.errors.labels(code).inc()
        await ws.send_str(json.dumps(EventFactory().error(message, code=code)))
        await ws.close(code=close, message=close_reason(message))
        return ws

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=self.max_frame_bytes, autoping=True)
        await ws.prepare(request)
        try:
            settings = decode_settings(request.headers.get(SESSION_HEADER, ""))
        except ClientError as e:
            return await self._refuse(ws, e.code, e.message, 1008)
        if self.host.draining:
            return await self._refuse(ws, "unavailable", "engine is shutting down; reconnect", 1013)
        metadata = {
            KEY_ID_METADATA: request.headers.get(KEY_ID_METADATA, ""),
            PLACEMENT_METADATA: request.headers.get(PLACEMENT_METADATA, ""),
        }
        duplex_events = request.query.get("duplex_events", "") in ("1", "true")
        session = RealtimeSession(
            ws,
            self.host,
            self.metrics,
            settings,
            duplex_events,
            metadata,
            bridge_clock=self.bridge_clock,
            clock=self.clock,
        )
        self.metrics.sessions.inc()
        self.metrics.active.inc()
        self.sessions.add(session)
        try:
            await session.run()
        except ConnectionError:
            pass  # the client went away mid-write
        finally:
            self.sessions.discard(session)
            self.metrics.active.dec()
        return ws
