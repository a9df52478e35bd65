"""``duplex loadtest``'s pre-flight probe against a real engine behind Envoy and the session picker: the
session it opens and cancels at its ``SessionReady`` is ended at once, not kept for a resume — a kept one held
a slot for the whole resume grace, and a load test at exactly a replica's capacity had one conversation
refused (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from duplex.loadtest.preflight import check_target
from duplex.serving import client
from duplex.serving.spec import EngineSpec

from .conftest import Stack, start_stack, stop_stack


@pytest.fixture(scope="module")
def one_slot(tiny_model: Any) -> Iterator[Stack]:
    # a resume grace far longer than the wait below: a kept probe session would still hold the slot
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=1, resume_grace_s=120.0)
    s = start_stack(spec, copy.deepcopy(tiny_model))
    yield s
    stop_stack(s)


def test_the_probe_frees_its_slot_instead_of_keeping_it_for_a_resume(one_slot: Stack) -> None:
    check_target(one_slot.front_addr, None, "", chunk_ms=200)
    end = time.monotonic() + 20.0  # a liveness bound: the buggy probe holds the slot for 120 s
    while (one_slot.placed() or one_slot.active()) and time.monotonic() < end:
        time.sleep(0.02)

    async def parked() -> int:
        return one_slot.engine.resumes.parked_count()

    assert one_slot.placed() == 0, "the probe's session still holds the replica's only slot"
    assert one_slot.thread.run(parked()) == 0, "the probe's session was kept for a resume"

    async def one_conversation() -> client.Conversation:
        async with grpc.aio.insecure_channel(one_slot.front_addr) as ch:
            return await client.converse(ch, [bytes(6400)] * 2, chunk_ms=200, realtime=False)

    one_slot.poll_load()  # the picker's view of the slot: the engine's report now, not at its next poll
    conv = asyncio.run(one_conversation())  # the replica's only slot is free for the load test's first user
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert conv.audio_seqs() == [0, 1]
