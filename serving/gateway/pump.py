"""The gateway's single reader of a client's request stream. Relaying through a queue (instead of handing the
stream itself to the engine call) keeps the stream readable after the engine ended the conversation, so the
gateway can discard what the client is still writing before it answers (``serving/drain.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..drain import drain_client


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
        finally:
            await self.queue.put(None)  # half-closed, failed or cancelled: no more messages

    async def messages(self) -> AsyncIterator[bytes]:
        while (raw := await self.queue.get()) is not None:
            yield raw

    async def drain(self) -> bool:
        """Discard what the client still sends (see ``drain_client``); True when it half-closed."""
        return await drain_client(self.queue.get, lambda m: m is None)

    def close(self) -> None:
        self.task.cancel()
