"""An engine's refusal reaches the client through the front door with its status, message and trailing
metadata: a real engine (one slot, filled by a direct connection) behind Envoy and a session picker whose last
load poll still says the slot is free, so the picker places the session and the engine itself answers
RESOURCE_EXHAUSTED with ``retry-after-ms``, which Envoy carries to the client unchanged."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import grpc

from duplex.serving import client
from duplex.serving.spec import EngineSpec

from .conftest import start_stack, stop_stack, tone
from .helpers import eventually

CHUNK = 3200


def test_engine_refusal_passes_through_with_its_trailing_metadata(tiny_model: Any) -> None:
    # one load poll, at start: the picker never learns of the direct call
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=1)
    stack = start_stack(spec, copy.deepcopy(tiny_model), health_interval_s=600)
    short = client.split_chunks(tone(0.4), CHUNK)

    async def scenario() -> tuple[client.Conversation, client.Conversation]:
        async with (
            grpc.aio.insecure_channel(stack.front_addr) as front,
            grpc.aio.insecure_channel(stack.engine_addr) as direct_ch,
        ):
            direct = asyncio.create_task(client.converse(direct_ch, client.split_chunks(tone(6.0), CHUNK)))
            await eventually(lambda: stack.active() == 1, deadline_s=30, what="the direct session holds the slot")
            refused = await client.converse(front, short, realtime=False, resume=False)
            return refused, await direct

    try:
        refused, direct = asyncio.run(scenario())
    finally:
        stop_stack(stack)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (refused.code, refused.details)
    assert "replica full" in refused.details  # the engine's own refusal, not the picker's
    assert ("retry-after-ms", "1000") in refused.trailing
    assert direct.code == grpc.StatusCode.OK  # the session holding the slot was not harmed
