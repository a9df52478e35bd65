"""The gateway's single reader of a client's request stream. Relaying through a queue (instead of handing the
stream itself to the engine call) keeps the stream readable after the engine ended the conversation, so the
gateway can discard what the client is still writing before it answers (``serving/drain.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from ..drain import drain_client

log = logging.getLogger(__name__)


class ClientPump:
    """Reads ``requests`` (after ``first``) into a small queue from one task; ``messages()`` relays them."""

    def __init__(self, first: bytes, requests: AsyncIterator[bytes], depth: int = 2) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(depth)
        self.queue.put_nowait(first)
        self.task = asyncio.create_task(self._run(requests))

    async def _run(self, requests: AsyncIterator[bytes]) -> None:
        try:
            async for raw in requests:
                await self.queue.put(raw)
        except asyncio.CancelledError:
            # close(): nobody reads any more, so waiting for room for the end mark would hold this task
            # (and a process's shutdown) forever; mark the end only if there is room, and stay cancelled
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            raise
        except Exception as e:  # the call failed under the read: the reader still gets the end mark
            log.debug("client stream read failed: %r", e)
        await self.queue.put(None)  # half-closed or failed: no more messages

    async def messages(self) -> AsyncIterator[bytes]:
        while (raw := await self.queue.get()) is not None:
            yield raw

    async def drain(self) -> bool:
        """Discard what the client still sends (see ``drain_client``); True when it half-closed."""
        return await drain_client(self.queue.get, lambda m: m is None)

    def close(self) -> None:
        self.task.cancel()
