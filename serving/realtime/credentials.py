"""What travels with a Realtime WebSocket upgrade besides the events: the credential a client offers (read by the
session picker, which checks it), and the session settings a client secret carried (the picker hands them to the
engine in ``SESSION_HEADER``, base64url JSON, which Envoy sets on the upgrade request)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from .protocol import ClientError, SessionSettings

REALTIME_PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
"""The subprotocol browsers offer (with ``openai-insecure-api-key.KEY``); the engine selects it."""
KEY_SUBPROTOCOL = "openai-insecure-api-key."
SESSION_HEADER = "x-duplex-realtime-session"
"""The settings a client secret was minted with, base64url JSON (set by the session picker; "" = none)."""


def offered_key(headers: Mapping[str, str]) -> str:
    """The credential a client presents: ``Authorization: Bearer KEY`` or the ``openai-insecure-api-key.KEY``
    subprotocol (browsers cannot set headers on a WebSocket); "" = none. ``headers`` keys are lower-case."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for proto in headers.get("sec-websocket-protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL) :]
    return ""


def encode_settings(session: Mapping[str, Any]) -> str:
    """``SESSION_HEADER``'s value for ``session`` (a client secret's settings)."""
    if not session:
        return ""
    return base64.urlsafe_b64encode(json.dumps(session, separators=(",", ":")).encode()).rstrip(b"=").decode()


def decode_settings(value: str) -> SessionSettings:
    """The settings ``SESSION_HEADER`` carries, checked like a ``session.update``; ClientError naming the header
    when it is not base64url JSON or names a setting this server cannot apply."""
    settings = SessionSettings()
    if not value:
        return settings
    try:
        session = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        raise ClientError(f"{SESSION_HEADER}: not base64url JSON", SESSION_HEADER, "invalid_header") from None
    try:
        settings.update(session, started=False)
    except ClientError as e:
        raise ClientError(f"{SESSION_HEADER}: {e.message}", SESSION_HEADER, "invalid_header") from None
    return settings
