"""The gateway's single reader of a client's request stream. Relaying through a queue (instead of handing the
stream itself to the engine call) keeps the stream readable after the engine ended the conversation, so the
gateway can discard what the client is still writing before it answers (``serving/drain.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from ..drain import QUIET_S, drain_client

log = logging.getLogger(__name__)


class ClientPump:
    """Reads ``requests`` (after ``first``) into a small queue from one task; ``messages()`` relays them."""

    def __init__(self, first: bytes, requests: AsyncIterator[bytes], depth: int = 2) -> None:
        self.first = first
        self.relayed = 0
        """Messages the latest ``messages()`` handed out (the first included)."""
        self.consumer: asyncio.Task[object] | None = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(depth)
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
        """``first``, then what the client sends. Each call starts again at ``first``: when a replica failed
        before it took more than that, the conversation can start over on another (``relayed`` says)."""
        self.relayed = 1
        self.consumer = asyncio.current_task()  # grpc's task that reads this generator for one call
        yield self.first
        while (raw := await self.queue.get()) is not None:
            self.relayed += 1
            yield raw

    def detach(self) -> None:
        """Stop the call that reads ``messages()`` now from taking more (before handing them to another call):
        grpc leaves the reader of a call that already failed waiting on the queue, where it would take the
        next message."""
        if self.consumer is not None and self.consumer is not asyncio.current_task():
            self.consumer.cancel()
        self.consumer = None

    async def drain(self) -> bool:
        """Discard what the client still sends (see ``drain_client``); True when it half-closed."""
        return await drain_client(self.queue.get, lambda m: m is None)

    async def settle(self, wait_s: float = QUIET_S) -> None:
        """Discard what is buffered, then wait at most ``wait_s`` for the client's next message (or half-close).

        Used before an error the client did not cause (its engine died): draining to half-close would hold a
        real-time client for its whole remaining conversation. Right after a real-time client's write has
        arrived its next one is a chunk period away, so a status sent then does not race a write (the race
        ``serving/drain.py`` describes); a client that is not writing is not racing either."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s  # a client writing flat out would keep the buffer full: bound it
        while loop.time() < deadline:
            while not self.queue.empty():
                if self.queue.get_nowait() is None:
                    return
            await asyncio.sleep(0)  # let the reader move a message it holds into the freed room
            if self.queue.empty():
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.get(), wait_s)

    def close(self) -> None:
        self.task.cancel()
