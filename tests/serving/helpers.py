from __future__ import annotations

import time
from collections.abc import Callable


async def eventually(cond: Callable[[], bool], deadline_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until true or fail after the deadline (state observation, not synchronisation by sleep)."""
    import asyncio

    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
