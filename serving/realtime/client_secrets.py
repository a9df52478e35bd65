"""Short-lived client secrets (``ek_...``) for pages: minted by ``POST /v1/realtime/client_secrets`` with an API
key, then accepted in place of a key until they expire.

A secret is self-contained and signed (HMAC-SHA256): ``ek_`` + base64url(JSON claims) + ``.`` +
base64url(signature). The signing key derives from the gateway's stored key digests (the keys Secret, which
therefore stays a secret even though it holds only hashes), so every gateway replica that mounts the same
Secret accepts the secrets any of them minted, and rotating the keys revokes them all. An open gateway (no
keys) signs with a random per-process key. The claims carry the expiry, the id of the key that minted the
secret (its sessions count against that key's quotas) and the session settings it was minted with (applied
when a WebSocket connects with it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PREFIX = "ek_"
DEFAULT_TTL_S = 600
"""Lifetime of a secret minted without ``expires_after`` (OpenAI's default, 10 minutes)."""
MIN_TTL_S, MAX_TTL_S = 10, 7200
"""Accepted ``expires_after.seconds`` (OpenAI's bounds)."""


class SecretError(ValueError):
    """A secret that is malformed, forged or expired; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    expires_at: int
    """Unix seconds after which the secret is refused."""
    session: dict[str, Any]
    """``session`` settings given when it was minted (``{}`` = none), applied like a ``session.update``."""
    key_id: str
    """Id of the API key that minted it (quotas are counted against that key)."""


class SecretMinter:
    """Mints and checks client secrets. ``clock`` (Unix seconds) is injectable so tests step time."""

    def __init__(self, key_digests: list[bytes], clock: Callable[[], float] = time.time) -> None:
        material = b"\n".join(sorted(key_digests)) if key_digests else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"duplex realtime client secret\n" + material).digest()
        self.clock = clock

    def mint(self, ttl_s: int, session: dict[str, Any], key_id: str = "") -> tuple[str, int]:
        """A new secret valid for ``ttl_s`` seconds, minted with the key ``key_id``; (value, expires_at)."""
        expires_at = int(self.clock()) + ttl_s
        claims = {"exp": expires_at, "nonce": secrets.token_hex(8), "session": session, "kid": key_id}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{PREFIX}{body}.{self._sign(body)}", expires_at

    def check(self, value: str) -> Claims:
        """The claims of a valid, unexpired secret; SecretError otherwise."""
        body, dot, sig = value.removeprefix(PREFIX).partition(".")
        if not value.startswith(PREFIX) or not dot:
            raise SecretError("not a client secret (ek_...)")
        if not hmac.compare_digest(sig, self._sign(body)):
            raise SecretError("invalid client secret")
        try:
            claims = json.loads(_unb64(body))
            expires_at, session, key_id = int(claims["exp"]), claims.get("session") or {}, str(claims.get("kid", ""))
        except (ValueError, KeyError, TypeError):
            raise SecretError("invalid client secret") from None
        if self.clock() >= expires_at:
            raise SecretError("client secret expired; mint a new one (POST /v1/realtime/client_secrets)")
        return Claims(expires_at, session if isinstance(session, dict) else {}, key_id)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def ttl_from_request(body: dict[str, Any]) -> int:
    """``expires_after`` of a mint request → seconds; ValueError naming the field."""
    after = body.get("expires_after")
    if after is None:
        return DEFAULT_TTL_S
    if not isinstance(after, dict):
        raise ValueError("expires_after: must be an object {anchor, seconds}")
    anchor = after.get("anchor", "created_at")
    if anchor != "created_at":
        raise ValueError(f"expires_after.anchor {anchor!r}: only 'created_at' is supported")
    seconds = after.get("seconds", DEFAULT_TTL_S)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise ValueError(f"expires_after.seconds {seconds!r}: must be an integer from {MIN_TTL_S} to {MAX_TTL_S}")
    return seconds
