"""Session resumption: the engine's register of resumable sessions and their tokens.

A session's token is ``e1.HANDLE.SECRET``: ``HANDLE`` names the entry, ``SECRET`` is 32 random bytes
(``secrets``) compared in constant time. The token is bound to the API key id the session picker set when the
session started (``KEY_ID_METADATA`` in ``serving/resume_token.py``): a resume presenting another key id is
refused. When a session's stream drops the engine *parks* it: its slot stays occupied for ``grace_s`` on the
injected clock, during which one new stream may *claim* it; past the grace ``sweep`` frees it.
"""

from __future__ import annotations

import collections
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from .session import Conversation
from .validate import InputError

TOKEN_PREFIX = "e1"
EXPIRED_MEMORY = 4096
"""Handles of expired sessions remembered, so a late resume is told the grace expired (not just "unknown")."""


@dataclass
class Resumable:
    """One session that may be resumed."""

    conversation: Conversation
    """The session (slot, model state, turn state, agent jobs stay with it while parked)."""
    secret: str
    """The token's secret part."""
    key_id: str
    """API key id the session was started with ("" = direct to the engine)."""
    expires_at: float | None = None
    """Clock time past which a parked session is freed; None = a stream is attached."""


class ResumeRegistry:
    """The resumable sessions of one engine replica (event loop only)."""

    def __init__(self, grace_s: float, clock: Callable[[], float], on_expire: Callable[[Conversation], None]) -> None:
        """``clock``: monotonic seconds the grace is measured on; ``on_expire``: frees an expired session."""
        self.grace_s = grace_s
        self.clock = clock
        self.on_expire = on_expire
        self.entries: dict[str, Resumable] = {}
        self.expired: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.grace_s > 0

    def issue(self, conv: Conversation, key_id: str) -> str:
        """Register a new, attached session and return its token."""
        handle = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        self.entries[handle] = Resumable(conv, secret, key_id)
        conv.resume_handle = handle
        return f"{TOKEN_PREFIX}.{handle}.{secret}"

    def park(self, conv: Conversation) -> None:
        """The session's stream dropped: keep it for the grace."""
        entry = self.entries.get(conv.resume_handle)
        if entry is not None:
            entry.expires_at = self.clock() + self.grace_s

    def forget(self, conv: Conversation) -> None:
        """The session ended (or was freed): its token resumes nothing any more."""
        self.entries.pop(conv.resume_handle, None)

    def claim(self, token: str, key_id: str) -> Conversation:
        """The parked session ``token`` names, now attached to the caller's stream; ``InputError`` naming the
        token when it is malformed, unknown, expired, another key's or attached to a live stream."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise InputError(
                grpc.StatusCode.INVALID_ARGUMENT, "start.resume_token: malformed (expected the token of a SessionReady)"
            )
        _, handle, secret = parts
        entry = self.entries.get(handle)
        now = self.clock()
        if entry is not None and entry.expires_at is not None and now >= entry.expires_at:
            self._expire(handle)  # the sweep has not run yet: the grace counts, not the sweep's timing
            entry = None
        if entry is None or not hmac.compare_digest(entry.secret.encode(), secret.encode()):
            if handle in self.expired:
                raise InputError(
                    grpc.StatusCode.NOT_FOUND,
                    f"start.resume_token: the session's resume grace ({self.grace_s:g} s) expired and its slot "
                    "was freed; start a new session",
                )
            raise InputError(
                grpc.StatusCode.NOT_FOUND, "start.resume_token: no resumable session has this token on this replica"
            )
        if not hmac.compare_digest(entry.key_id.encode(), key_id.encode()):
            raise InputError(grpc.StatusCode.PERMISSION_DENIED, "start.resume_token: issued to another API key")
        conv = entry.conversation
        if conv.closing is not None or conv.left:
            self.forget(conv)
            raise InputError(
                grpc.StatusCode.NOT_FOUND, "start.resume_token: the session already ended; start a new session"
            )
        if entry.expires_at is None:
            raise InputError(
                grpc.StatusCode.ABORTED,
                "start.resume_token: the session is still attached to a live stream (retry once it dropped)",
            )
        entry.expires_at = None
        return conv

    def sweep(self) -> int:
        """Free the parked sessions whose grace is over; returns how many."""
        now = self.clock()
        gone = [h for h, e in self.entries.items() if e.expires_at is not None and now >= e.expires_at]
        for h in gone:
            self._expire(h)
        return len(gone)

    def next_expiry(self) -> float | None:
        times = [e.expires_at for e in self.entries.values() if e.expires_at is not None]
        return min(times) if times else None

    def parked_count(self) -> int:
        return sum(e.expires_at is not None for e in self.entries.values())

    def _expire(self, handle: str) -> None:
        conv = self.entries.pop(handle).conversation
        self.expired[handle] = None
        while len(self.expired) > EXPIRED_MEMORY:
            self.expired.popitem(last=False)
        self.on_expire(conv)
