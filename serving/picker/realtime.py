"""The session picker's Realtime side: its ``ext_authz`` answer for a WebSocket upgrade ``GET /v1/realtime``
(the key from ``Authorization: Bearer`` or the ``openai-insecure-api-key.KEY`` subprotocol, or an ``ek_`` client
secret in either; the key's quotas; the engines with a free slot, most free first, reached at their Realtime
WebSocket ports: Envoy tries the next when it cannot reach one), and a
small HTTP app (aiohttp) for what is not a conversation:

| route | what |
|---|---|
| ``POST /v1/realtime/client_secrets`` | mint a short-lived ``ek_...`` secret (API key required unless open) |
| ``GET /v1/realtime/config`` | what the page needs: rates, chunk, whether a key is required |
| ``GET /``, ``GET /static/{path}`` | the page (``duplex.serving.web``'s ``static/``) |

A denied upgrade gets HTTP 401, 429 (with ``retry-after``) or 503 and an OpenAI-style JSON error body naming
the reason."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from google.protobuf.wrappers_pb2 import BoolValue

from duplex.ext_authz.v3 import external_auth_pb2 as authz

from ..envoy.config import REPLICA_HEADER, START_ATTEMPTS
from ..realtime.audio import WIRE_RATE
from ..realtime.client_secrets import PREFIX, SecretError, SecretMinter, ttl_from_request
from ..realtime.credentials import KEY_SUBPROTOCOL, REALTIME_PATH, SESSION_HEADER, SUBPROTOCOL, encode_settings
from ..realtime.credentials import offered_key as offered
from ..realtime.protocol import ClientError, SessionSettings
from ..resume_token import KEY_ID_METADATA, PLACEMENT_METADATA
from ..web.listen import listen
from .auth import ANONYMOUS, KeyRing
from .placement import ranked, sessions_by_key
from .routing import Replica

if TYPE_CHECKING:
    from .server import Picker

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
MAX_SECRET_REQUEST_BYTES = 64 * 1024
"""Largest ``POST /v1/realtime/client_secrets`` body."""
_STATUS = {401: grpc.StatusCode.UNAUTHENTICATED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED}


def _set(key: str, value: str) -> authz.HeaderValueOption:
    return authz.HeaderValueOption(
        header=authz.HeaderValue(key=key, value=value), append=BoolValue(value=False), append_action=2
    )


def error_body(message: str, code: str, kind: str = "invalid_request_error", param: str | None = None) -> str:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"type": kind, "code": code, "message": message, "param": param}})


def deny_upgrade(status: int, message: str, code: str, retry_after_s: float | None = None) -> authz.CheckResponse:
    """An upgrade refused with HTTP ``status`` and a JSON error body naming why (``retry-after`` on 429)."""
    headers = [_set("content-type", "application/json")]
    if retry_after_s is not None:
        headers.append(_set("retry-after", str(max(1, round(retry_after_s)))))
    kind = "authentication_error" if status == 401 else "rate_limit_error" if status == 429 else "server_error"
    number = _STATUS.get(status, grpc.StatusCode.UNAVAILABLE).value[0]
    return authz.CheckResponse(
        status=authz.RpcStatus(code=number, message=message),
        denied_response=authz.DeniedHttpResponse(
            status=authz.HttpStatus(code=status), headers=headers, body=error_body(message, code, kind)
        ),
    )


def ws_address(replica: Replica) -> str:
    """The engine's Realtime WebSocket address: its gRPC host and the ``http_port`` it reports."""
    return f"{replica.address.rpartition(':')[0]}:{replica.http_port}"


class RealtimeAuthz:
    """The picker's decision for one WebSocket upgrade: credential → quotas → engine."""

    def __init__(self, picker: Picker, clock: Callable[[], float] = time.time) -> None:
        """``clock`` (Unix seconds) drives client-secret expiry; tests inject one."""
        self.picker = picker
        self.keys: KeyRing = picker.keys
        self.minter = SecretMinter([k.digest for k in picker.keys.stored], clock)

    def identify(self, key: str) -> tuple[str | None, str, dict[str, Any]]:
        """(why refused or None, the key id quotas count on, the settings a client secret carried)."""
        if key.startswith(PREFIX):
            try:
                claims = self.minter.check(key)
                return None, claims.key_id, claims.session
            except SecretError as e:
                return (None if self.keys.open_access else str(e)), ANONYMOUS, {}
        check = self.keys.identify({"authorization": f"Bearer {key}"} if key else {})
        return check.why if check.key_id is None else None, check.key_id or "", {}

    def decide(self, headers: dict[str, str]) -> authz.CheckResponse:
        why, key_id, minted = self.identify(offered(headers))
        if why is not None:
            return deny_upgrade(401, why, "invalid_api_key")
        p = self.picker
        p.quotas.live = sessions_by_key(p.router.replicas, p.placements)
        refusal = p.quotas.admit(key_id)
        if refusal is not None:
            return deny_upgrade(429, refusal.message, "rate_limit_exceeded", refusal.retry_after_s)
        served = [r for r in p.router.replicas if r.http_port]
        room = ranked(served, p.placements.pending())
        if not room:
            if not any(r.healthy for r in served):
                return deny_upgrade(503, "no healthy engine replica serves the Realtime endpoint; retry", "unavailable")
            used, cap = p.router.total_capacity()
            return deny_upgrade(
                429,
                f"all engine replicas are full ({used}/{cap} sessions); retry",
                "rate_limit_exceeded",
                p.spec.retry_after_s,
            )
        # as a gRPC session's start: counted on the first; Envoy tries the next listed when it cannot reach it
        replica, listed = room[0], room[:START_ATTEMPTS]
        placement = p.placements.add(replica.address, key_id)
        p.metrics.placed.labels(replica.address).inc()
        headers_out = [
            _set(REPLICA_HEADER, ",".join(ws_address(r) for r in listed)),
            _set(KEY_ID_METADATA, key_id),
            _set(PLACEMENT_METADATA, placement),
            _set(SESSION_HEADER, encode_settings(minted)),
        ]
        return authz.CheckResponse(
            status=authz.RpcStatus(code=0), ok_response=authz.OkHttpResponse(headers=headers_out)
        )


def _json_error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return web.Response(status=status, text=error_body(message, code, kind, param), content_type="application/json")


class RealtimeHttp:
    """The picker's HTTP app: client secrets, the page's config, the page."""

    def __init__(self, authz_: RealtimeAuthz) -> None:
        self.authz = authz_
        self.picker = authz_.picker
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_SECRET_REQUEST_BYTES)
        app.router.add_post(f"{REALTIME_PATH}/client_secrets", self.client_secret)
        app.router.add_get(f"{REALTIME_PATH}/config", self.config)
        app.router.add_get("/", self.index)
        if STATIC_DIR.is_dir():
            app.router.add_static("/static", STATIC_DIR)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0 = any free port); the bound port."""
        self._runner, bound = await listen(self.app(), host, port, "picker")
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def model_name(self) -> str:
        return next((r.model for r in self.picker.router.replicas if r.healthy and r.model), "duplex")

    async def client_secret(self, request: web.Request) -> web.Response:
        key = offered({k.lower(): v for k, v in request.headers.items()})
        if key.startswith(PREFIX):
            return _json_error(401, "a client secret cannot mint client secrets; use an API key", "invalid_api_key")
        check = self.authz.keys.identify({"authorization": f"Bearer {key}"} if key else {})
        if check.key_id is None:
            return _json_error(401, check.why or "invalid API key", "invalid_api_key")
        try:
            body = json.loads(raw) if (raw := await request.read()).strip() else {}
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
        value, expires_at = self.authz.minter.mint(ttl, session if isinstance(session, dict) else {}, check.key_id)
        self.picker.metrics.client_secrets.inc()
        return web.json_response(
            {"value": value, "expires_at": expires_at, "session": settings.describe("", self.model_name())}
        )

    async def config(self, request: web.Request) -> web.Response:
        replicas = self.picker.router.replicas
        chunk_ms = next((r.chunk_ms for r in replicas if r.healthy and r.chunk_ms), 0)
        return web.json_response(
            {
                "realtime_path": REALTIME_PATH,
                "client_secrets_path": f"{REALTIME_PATH}/client_secrets",
                "subprotocols": [SUBPROTOCOL, f"{KEY_SUBPROTOCOL}KEY"],
                "sample_rate": WIRE_RATE,
                "audio_format": {"type": "audio/pcm", "rate": WIRE_RATE},
                "chunk_ms": chunk_ms,
                "model": self.model_name(),
                "key_required": not self.authz.keys.open_access,
                "max_frame_bytes": self.picker.spec.max_message_bytes,
            }
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text="the page is not installed (duplex.serving.web static/index.html)")
        return web.FileResponse(page)
