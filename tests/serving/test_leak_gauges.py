"""The engine's leak gauges (what ``bench/soak.py`` watches): slots occupied and asyncio tasks go back to
where they were once conversations have ended — finished ones and ones whose client vanished mid-way
(call cancelled, no EndOfStream) — and the process collector's RSS and fd counts are exported."""

from __future__ import annotations

import asyncio

import grpc

from duplex.serving import client

from .conftest import AUTH, Stack, tone
from .helpers import eventually

CHUNK = 3200


def gauge(stack: Stack, name: str) -> float:
    value = stack.engine.metrics.registry.get_sample_value(name)
    assert value is not None, f"{name} is not exported"
    return value


async def test_slots_and_tasks_return_after_finished_and_vanished_clients(stack: Stack) -> None:
    await eventually(lambda: gauge(stack, "duplex_engine_slots_occupied") == 0, what="an idle engine")
    tasks_before = gauge(stack, "duplex_engine_asyncio_tasks")
    assert gauge(stack, "process_resident_memory_bytes") > 0 and gauge(stack, "process_open_fds") > 0
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        long_talk = client.split_chunks(tone(20.0), CHUNK)
        vanishing = [asyncio.create_task(client.converse(ch, long_talk, metadata=AUTH)) for _ in range(3)]
        finished = [asyncio.create_task(client.converse(ch, long_talk[:3], metadata=AUTH)) for _ in range(2)]
        await eventually(lambda: gauge(stack, "duplex_engine_slots_occupied") == 5, what="5 sessions placed")
        assert gauge(stack, "duplex_engine_asyncio_tasks") > tasks_before
        for done in await asyncio.gather(*finished):
            assert done.code == grpc.StatusCode.OK and done.audio_seqs() == [0, 1, 2]
        for task in vanishing:  # the clients disappear mid-conversation
            task.cancel()
        await asyncio.gather(*vanishing, return_exceptions=True)
    await eventually(lambda: gauge(stack, "duplex_engine_slots_occupied") == 0, what="every slot freed")
    await eventually(lambda: gauge(stack, "duplex_engine_asyncio_tasks") <= tasks_before, what="tasks back")
    assert stack.active() == 0
