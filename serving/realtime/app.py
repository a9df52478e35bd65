"""The gateway's HTTP side (aiohttp, on the gateway's event loop): the Realtime WebSocket endpoint, client
secrets for pages, the page's config, and the page itself.

| route | what |
|---|---|
| ``GET /v1/realtime`` (WebSocket) | one conversation (``session.RealtimeSession``) |
| ``POST /v1/realtime/client_secrets`` | mint a short-lived ``ek_...`` secret (API key required unless open) |
| ``GET /v1/realtime/config`` | what the page needs: rates, chunk, whether a key is required |
| ``GET /``, ``GET /static/{path}`` | the page (``duplex.serving.web``'s ``static/``) |
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from ..gateway.auth import ANONYMOUS
from .audio import WIRE_RATE
from .client_secrets import PREFIX, SecretError, SecretMinter, ttl_from_request
from .metrics import RealtimeMetrics
from .protocol import ClientError, EventFactory, SessionSettings
from .session import RealtimeSession

if TYPE_CHECKING:
    from ..gateway.server import GatewayServer

log = logging.getLogger(__name__)

SUBPROTOCOL = "realtime"
"""The subprotocol browsers offer (with ``openai-insecure-api-key.KEY``); the server selects it."""
KEY_SUBPROTOCOL = "openai-insecure-api-key."
STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
MAX_SECRET_REQUEST_BYTES = 64 * 1024
"""Largest ``POST /v1/realtime/client_secrets`` body."""


def _offered_key(request: web.Request) -> str:
    """The credential a client presents: ``Authorization: Bearer KEY`` or the ``openai-insecure-api-key.KEY``
    subprotocol (browsers cannot set headers on a WebSocket)."""
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for proto in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(","):
        proto = proto.strip()
        if proto.startswith(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL) :]
    return ""


def _json_error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    body = {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": param}}
    return web.json_response(body, status=status)


class RealtimeServer:
    """Serves the routes above for one ``GatewayServer`` (its keys, router, admission and metrics registry).
    ``clock`` (Unix seconds) drives client-secret expiry, ``bridge_clock`` (monotonic seconds) the sessions'
    bridge timing; tests inject them."""

    def __init__(
        self,
        gateway: GatewayServer,
        clock: Callable[[], float] = time.time,
        bridge_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.gateway = gateway
        self.bridge_clock = bridge_clock
        """Handed to each new session (``RealtimeSession.bridge_clock``)."""
        self.keys = gateway.keys
        self.minter = SecretMinter([k.digest for k in gateway.keys.stored], clock)
        self.metrics = RealtimeMetrics(gateway.metrics.registry)
        self.sessions: set[RealtimeSession] = set()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_SECRET_REQUEST_BYTES)
        app.router.add_get("/v1/realtime", self.websocket)
        app.router.add_post("/v1/realtime/client_secrets", self.client_secret)
        app.router.add_get("/v1/realtime/config", self.config)
        app.router.add_get("/", self.index)
        if STATIC_DIR.is_dir():
            app.router.add_static("/static", STATIC_DIR)
        return app

    async def start(self, port: int) -> int:
        """Listen on the gateway's host (TLS as its gRPC port); the bound port."""
        spec = self.gateway.spec
        context = None
        if spec.tls_cert_file and spec.tls_key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(spec.tls_cert_file, spec.tls_key_file)
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, spec.host, port, ssl_context=context, reuse_port=False)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"gateway: cannot bind http_port {spec.host}:{port}: {e.strerror or e}") from None
        self._runner = runner
        bound = runner.addresses[0][1]
        assert isinstance(bound, int)
        log.info("realtime endpoint on %s:%d (/v1/realtime, page /)", spec.host, bound)
        return bound

    async def stop(self) -> None:
        for s in list(self.sessions):
            await s.ws.close(code=1001, message=b"gateway shutting down")
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def model_name(self) -> str:
        return next((r.model for r in self.gateway.router.replicas if r.healthy and r.model), "duplex")

    # ------------------------------------------------------------------------------------------- handlers
    def authenticate(self, key: str) -> tuple[str | None, dict[str, Any], str]:
        """(why refused or None, session settings minted into a client secret, the key id quotas count on)."""
        if key.startswith(PREFIX):
            try:
                claims = self.minter.check(key)
                return None, claims.session, claims.key_id
            except SecretError as e:
                return (None if self.keys.open_access else str(e)), {}, ANONYMOUS
        check = self.keys.identify({"authorization": f"Bearer {key}"} if key else {})
        return check.why, {}, check.key_id or ""

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), max_msg_size=self.gateway.spec.max_message_bytes, autoping=True
        )
        await ws.prepare(request)
        key = _offered_key(request)
        why, minted, key_id = self.authenticate(key)
        events = EventFactory()
        if why is not None:
            self.metrics.errors.labels("invalid_api_key").inc()
            await ws.send_str(json.dumps(events.error(why, code="invalid_api_key", kind="authentication_error")))
            await ws.close(code=1008, message=why.encode()[:123])
            return ws
        settings = SessionSettings()
        if minted:
            try:
                settings.update(minted, started=False)
            except ClientError:  # checked when minted; a changed server may disagree: start plain
                settings = SessionSettings()
        if self.gateway.draining:
            await ws.send_str(json.dumps(events.error("gateway is draining; reconnect", code="unavailable")))
            await ws.close(code=1013, message=b"gateway is draining")
            return ws
        duplex_events = request.query.get("duplex_events", "") in ("1", "true")
        auth = "open" if not key else ("client_secret" if key.startswith(PREFIX) else "key")
        session = RealtimeSession(
            ws,
            self.gateway,
            self.metrics,
            settings,
            self.model_name(),
            duplex_events,
            lambda: time.time_ns() // 1000,
            key_id,
            self.bridge_clock,
        )
        self.metrics.sessions.labels(auth).inc()
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

    async def client_secret(self, request: web.Request) -> web.Response:
        key = _offered_key(request)
        if key.startswith(PREFIX):
            return _json_error(401, "a client secret cannot mint client secrets; use an API key", "invalid_api_key")
        check = self.keys.identify({"authorization": f"Bearer {key}"} if key else {})
        if check.why is not None:
            self.metrics.errors.labels("invalid_api_key").inc()
            return _json_error(401, check.why, "invalid_api_key")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            return _json_error(400, f"body: not JSON: {e}", "invalid_json")
        if not isinstance(body, dict):
            return _json_error(400, "body: a JSON object expected", "invalid_json")
        try:
            ttl = ttl_from_request(body)
        except ValueError as e:
            return _json_error(400, str(e), "invalid_value", "expires_after")
        session = body.get("session") or {}
        settings = SessionSettings()
        try:
            settings.update(session, started=False)
        except ClientError as e:
            return _json_error(400, e.message, e.code, e.param)
        value, expires_at = self.minter.mint(ttl, session if isinstance(session, dict) else {}, check.key_id or "")
        self.metrics.client_secrets.inc()
        return web.json_response(
            {"value": value, "expires_at": expires_at, "session": settings.describe("", self.model_name())}
        )

    async def config(self, request: web.Request) -> web.Response:
        chunk_ms = next((r.chunk_ms for r in self.gateway.router.replicas if r.healthy and r.chunk_ms), 0)
        return web.json_response(
            {
                "realtime_path": "/v1/realtime",
                "client_secrets_path": "/v1/realtime/client_secrets",
                "subprotocols": [SUBPROTOCOL, f"{KEY_SUBPROTOCOL}KEY"],
                "sample_rate": WIRE_RATE,
                "audio_format": {"type": "audio/pcm", "rate": WIRE_RATE},
                "chunk_ms": chunk_ms,
                "model": self.model_name(),
                "key_required": not self.keys.open_access,
                "max_frame_bytes": self.gateway.spec.max_message_bytes,
            }
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text="the page is not installed (duplex.serving.web static/index.html)")
        return web.FileResponse(page)
