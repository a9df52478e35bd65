"""An engine killed mid-conversation (SIGKILL of a real ``duplex engine`` process behind a real ``duplex
gateway``): its clients get UNAVAILABLE while their conversation is still going (not after they have sent
everything), the other engine's conversation is untouched, and new sessions go to the survivor at once — the
gateway polls health only every 30 s here, so only its connection watch and its retry of an unanswered
start can route them away from the dead engine."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import tone
from .test_cli import Proc, gateway_args

CHUNK = 3200
ENGINE = ["engine", "--port", "0", "--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"]


async def active_sessions(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        get_load = ch.unary_unary(
            "/duplex.v1.Replica/GetLoad",
            request_serializer=pb.LoadRequest.SerializeToString,
            response_deserializer=pb.ReplicaLoad.FromString,
        )
        load: pb.ReplicaLoad = await get_load(pb.LoadRequest(), timeout=5.0)
        return int(load.active_sessions)


async def until_one_session(addr: str, deadline_s: float = 30.0) -> None:
    """Poll the engine's load report until it holds exactly one conversation."""
    end = time.monotonic() + deadline_s
    while await active_sessions(addr) != 1:
        assert time.monotonic() < end, f"{addr} never held one conversation"
        await asyncio.sleep(0.02)


def test_engine_killed_mid_conversation() -> None:
    engines = [Proc([*ENGINE, "--set", "engine.max_sessions=4"]) for _ in "ab"]
    gateway = None
    try:
        a, b = (e.wait_for(r"engine serving \S+ on (127\.0\.0\.1:\d+)").group(1) for e in engines)
        gateway = Proc(gateway_args(f"{a},{b}", "gateway.open_access=true", "gateway.health_interval_s=30"))
        gaddr = gateway.wait_for(r"gateway on (127\.0\.0\.1:\d+)").group(1)
        long_talk = client.split_chunks(tone(8.0), CHUNK)

        async def scenario() -> tuple[list[client.Conversation], list[client.Conversation]]:
            async with grpc.aio.insecure_channel(gaddr) as ch:
                live = [asyncio.create_task(client.converse(ch, long_talk)) for _ in range(2)]
                for addr in (a, b):  # least-loaded routing: one conversation on each engine
                    await until_one_session(addr)
                engines[0].p.send_signal(signal.SIGKILL)
                short = client.split_chunks(tone(0.4), CHUNK)
                fresh = await asyncio.gather(*(client.converse(ch, short, realtime=False) for _ in range(3)))
                return list(await asyncio.gather(*live)), list(fresh)

        live, fresh = asyncio.run(scenario())
        victim, survivor = sorted(live, key=lambda c: c.ready.replica != a if c.ready else True)
        assert victim.ready is not None and victim.ready.replica == a
        assert victim.code == grpc.StatusCode.UNAVAILABLE, (victim.code, victim.details)
        assert len(victim.sent_us) < len(long_talk)  # told while the conversation was still going
        assert survivor.ready is not None and survivor.ready.replica == b
        assert survivor.code == grpc.StatusCode.OK and survivor.audio_seqs() == list(range(len(long_talk)))
        assert not any(r.event.audio.timing.substituted for r in survivor.of("audio"))
        for conv in fresh:
            assert conv.code == grpc.StatusCode.OK, (conv.code, conv.details)
            assert conv.ready is not None and conv.ready.replica == b
            assert conv.audio_seqs() == [0, 1]
    finally:
        for p in [gateway, *engines]:
            if p is not None and p.p.poll() is None:
                p.p.kill()
                p.p.wait(timeout=30)
