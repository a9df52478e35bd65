"""Ending a call with an error status without racing the client's writes.

When a server finishes a call while the client is still writing into it, grpc's Python aio client can fail the
in-flight write and report ``INTERNAL: Internal error from Core`` (``set_internal_error`` in grpc/aio/_call.py)
in place of the status the server sent — about two in five fast-writing bad sessions did, before this. So before
an error status the server reads and discards what the client is still sending, until it half-closes, pauses
for ``quiet_s`` (it is waiting for our answer, nothing is in flight) or ``max_s`` passes (a client that never
stops writing gets the status anyway)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

QUIET_S = 0.25
"""A pause in the client's writes this long means none is in flight (real-time clients write every chunk_ms)."""
MAX_S = 10.0
"""Longest time spent discarding before the status is sent regardless."""


async def drain_client(
    read: Callable[[], Awaitable[object]],
    is_end: Callable[[object], bool],
    quiet_s: float = QUIET_S,
    max_s: float = MAX_S,
) -> bool:
    """Read and discard with ``read`` until ``is_end(message)``, a pause of ``quiet_s`` or ``max_s``; True when
    the client half-closed. A failing read (the call already ended) stops the drain."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    while (left := deadline - loop.time()) > 0:
        pending = asyncio.ensure_future(read())
        done, _ = await asyncio.wait({pending}, timeout=min(quiet_s, left))
        if not done:
            pending.cancel()
            return False
        if pending.cancelled() or pending.exception() is not None:
            return False
        if is_end(pending.result()):
            return True
    return False
