"""An engine's refusal reaches the client through the gateway with its status, message and trailing metadata:
a real ``duplex engine`` (one slot, filled by a direct connection) behind a real ``duplex gateway`` whose last
load poll still says the slot is free, so the gateway admits and the engine itself answers RESOURCE_EXHAUSTED
with ``retry-after-ms``. (The gateway once passed grpc's ``Metadata`` object on as trailing metadata, which
grpc refuses: the client got UNKNOWN, found by ``bench/soak.py``.)"""

from __future__ import annotations

import asyncio

import grpc

from duplex.serving import client

from .conftest import tone
from .test_cli import Proc, gateway_args
from .test_engine_loss import CHUNK, ENGINE, until_one_session


def test_engine_refusal_passes_through_with_its_trailing_metadata() -> None:
    engine = Proc([*ENGINE, "--set", "engine.max_sessions=1"])
    gateway = None
    try:
        eaddr = engine.wait_for(r"engine serving \S+ on (127\.0\.0\.1:\d+)").group(1)
        # one load poll, at start: the gateway never learns of the direct call
        gateway = Proc(gateway_args(eaddr, "gateway.open_access=true", "gateway.health_interval_s=600"))
        gaddr = gateway.wait_for(r"gateway on (127\.0\.0\.1:\d+)").group(1)
        short = client.split_chunks(tone(0.4), CHUNK)

        async def scenario() -> tuple[client.Conversation, client.Conversation, client.Conversation]:
            async with grpc.aio.insecure_channel(gaddr) as gch, grpc.aio.insecure_channel(eaddr) as ech:
                warm = await client.converse(gch, short, realtime=False)  # the replica is known healthy and free
                direct = asyncio.create_task(client.converse(ech, client.split_chunks(tone(6.0), CHUNK)))
                await until_one_session(eaddr)
                refused = await client.converse(gch, short, realtime=False, resume=False)
                return warm, refused, await direct

        warm, refused, direct = asyncio.run(scenario())
        assert warm.code == grpc.StatusCode.OK, (warm.code, warm.details)
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (refused.code, refused.details)
        assert "replica full" in refused.details  # the engine's own refusal, not the gateway's admission
        assert ("retry-after-ms", "1000") in refused.trailing
        assert direct.code == grpc.StatusCode.OK  # the session holding the slot was not harmed
    finally:
        for p in [gateway, engine]:
            if p is not None and p.p.poll() is None:
                p.p.kill()
                p.p.wait(timeout=30)
