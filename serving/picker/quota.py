"""Per-key admission: at most N concurrent conversations per API key, and a token bucket on session starts.

Both are counted per key id (``KeyCheck.key_id``) by the session picker (each front replica counts its own
starts; live sessions come from the engines' reports). A refusal carries how long to wait, sent as
RESOURCE_EXHAUSTED with ``retry-after-ms`` trailing metadata. The clock is injected so tests drive time
without sleeping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; one token per session start."""

    rate: float
    """Tokens added per second."""
    burst: float
    """Bucket size: starts allowed back to back after a quiet period."""
    tokens: float = field(init=False)
    """Tokens now (starts full)."""
    updated: float | None = field(default=None, init=False)
    """Clock reading of the last refill (None = never used)."""

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """Take a token: 0.0 when taken, else the seconds until one will be there (nothing taken)."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class Refusal:
    """Why a session start was refused, and when to retry."""

    message: str
    """Status details for the client (names the limit, never the key)."""
    retry_after_s: float
    """Suggested wait before retrying."""

    @property
    def retry_after_ms(self) -> int:
        return max(1, math.ceil(self.retry_after_s * 1000))

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", str(self.retry_after_ms)),)


class KeyQuotas:
    """Admission per key. ``max_sessions`` 0 = no concurrency limit; ``starts_per_s`` 0 = no rate limit."""

    def __init__(
        self,
        max_sessions: int = 0,
        starts_per_s: float = 0.0,
        burst: int = 1,
        busy_retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.starts_per_s = starts_per_s
        self.burst = max(1, burst)
        self.busy_retry_s = busy_retry_s
        self.clock = clock
        self.live: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, key_id: str) -> Refusal | None:
        """Count a session start of ``key_id``; None = admitted (call ``release`` when it ends)."""
        live = self.live.get(key_id, 0)
        if self.max_sessions and live >= self.max_sessions:
            return Refusal(
                f"per-key session quota reached: key {key_id!r} has {live}/{self.max_sessions} live sessions "
                f"(gateway.key_max_sessions); retry after {math.ceil(self.busy_retry_s * 1000)} ms",
                self.busy_retry_s,
            )
        if self.starts_per_s:
            bucket = self.buckets.get(key_id)
            if bucket is None:
                bucket = self.buckets[key_id] = TokenBucket(self.starts_per_s, self.burst)
            wait = bucket.take(self.clock())
            if wait > 0:
                return Refusal(
                    f"per-key session start rate exceeded: key {key_id!r} may start {self.starts_per_s:g}/s "
                    f"(burst {self.burst}; gateway.key_starts_per_s); retry after {math.ceil(wait * 1000)} ms",
                    wait,
                )
        self.live[key_id] = live + 1
        return None

    def release(self, key_id: str) -> None:
        """A session admitted for ``key_id`` ended."""
        left = self.live.get(key_id, 0) - 1
        if left > 0:
            self.live[key_id] = left
        else:
            self.live.pop(key_id, None)
