"""The Redis side shared by workers and the engine-facing client: connections, consumer groups, the atomic
finish script, and reconnect backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .protocol import DATA

log = logging.getLogger("duplex.agent")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
"""What an unreachable Redis raises (redis-py's errors and the socket's own)."""


def connect(url: str, connect_timeout_s: float = 1.0) -> Redis:
    """A client that fails fast instead of retrying inside redis-py: the callers own the backoff."""
    return Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=None,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


async def ensure_group(r: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) reading from its start; an existing group is kept."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def is_nogroup(e: Exception) -> bool:
    """The group (or stream) vanished, e.g. Redis restarted without persistence."""
    return isinstance(e, ResponseError) and "NOGROUP" in str(e)


# KEYS: 1 guard, 2 reply stream, 3 jobs stream, 4 dead-letter stream
# ARGV: 1 guard ttl ms, 2 results maxlen, 3 group, 4 job entry id, 5 update json, 6 dead-letter json ("" = none),
#       7 dead-letter maxlen
# Sets the call's guard (NX) and only then appends its terminal update, and acknowledges the job in the same
# atomic step: a call never yields two results, and a job is never acknowledged before its result is written.
FINISH_LUA = """
local published = 0
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[5])
  if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'data', ARGV[6])
  end
  published = 1
end
if ARGV[4] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
end
return published
"""


def entry_data(fields: dict[Any, Any]) -> bytes:
    """The JSON payload of a stream entry (raises KeyError for an entry without one)."""
    value = fields.get(DATA, fields.get(DATA.decode()))
    if value is None:
        raise KeyError("entry has no 'data' field")
    return value if isinstance(value, bytes) else str(value).encode()


Entry = tuple[str, dict[Any, Any]]
"""A stream entry: its id and its fields (an empty dict for an entry trimmed away meanwhile)."""


def _entry(raw: Any) -> Entry:
    eid, fields = raw[0], raw[1]
    return (eid.decode() if isinstance(eid, bytes) else str(eid)), dict(fields or {})


def read_entries(resp: Any) -> list[Entry]:
    """The entries of a one-stream ``XREADGROUP`` answer (RESP2 list or RESP3 map form)."""
    if not resp:
        return []
    streams = list(resp.values()) if isinstance(resp, dict) else [s[1] for s in resp]
    return [_entry(e) for e in streams[0]]


def claimed_entries(resp: Any) -> list[Entry]:
    """The claimed entries of an ``XAUTOCLAIM`` answer."""
    return [_entry(e) for e in (resp[1] if resp else [])]


@dataclass
class Backoff:
    """Exponential reconnect delays: ``initial_s``, doubled per failure up to ``max_s``; ``reset`` on success."""

    initial_s: float = 0.1
    max_s: float = 5.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    failures: int = 0

    def next_delay(self) -> float:
        return min(self.max_s, self.initial_s * (2 ** min(self.failures, 30)))

    async def wait(self, reason: BaseException) -> None:
        delay = self.next_delay()
        self.failures += 1
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("redis unavailable (%s: %s); retrying in %.2fs", type(reason).__name__, reason, delay)
        await self.sleep(delay)

    def reset(self) -> None:
        if self.failures:
            log.info("redis reachable again after %d failed tries", self.failures)
        self.failures = 0
