"""Conversations over real gRPC on loopback, through Envoy and the session picker: ordered complete outputs
for 1 and 16 concurrent sessions, a late joiner, turn events and timing, health and reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import AUTH, Stack, tone
from .helpers import eventually

CHUNK = 3200


def check_complete(conv: client.Conversation, n: int) -> None:
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert conv.ready is not None and conv.ready.chunk_samples == CHUNK
    assert conv.audio_seqs() == list(range(n))
    outs = [r.event.audio for r in conv.of("audio")]
    assert [a.output_sample for a in outs] == [i * CHUNK for i in range(n)]
    for a in outs:
        assert a.samples == CHUNK and len(a.pcm) in (0, 2 * CHUNK) and len(a.control) == 5
        assert set(a.control) <= set(pb.FloorControl.values()), "every frame's control is a FloorControl"
        assert a.timing.seq == a.seq and a.timing.compute_ms > 0 and a.timing.batch_size >= 1


async def test_one_conversation(stack: Stack) -> None:
    chunks = client.split_chunks(tone(2.0), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(ch, chunks, metadata=AUTH)
    check_complete(conv, 10)
    t = conv.of("audio")[0].event.audio.timing
    assert t.server_recv_us <= t.step_start_us <= t.server_send_us
    assert t.client_time_us == conv.sent_us[0]
    await eventually(lambda: stack.active() == 0, what="slot released")


async def test_phase_hint_counts_from_the_ready(stack: Stack) -> None:
    """A start carrying the client's clock gets a send delay from the Ready's departure (the chunk is due
    ≥ 30 ms after the start reached the engine, within one chunk period more) and the engine's hold of the
    start; `converse` sends chunk 0 at the Ready's arrival less half the network round trip plus that delay.
    A start without a clock gets no hint (0)."""
    chunks = client.split_chunks(tone(0.6), CHUNK)
    start = client.start_event()
    start.start.client_time_us = stamp = client.now_us()
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(ch, chunks, metadata=AUTH, start=start)
        check_complete(conv, 3)
        (got,) = conv.of("ready")
        ready = got.event.ready
        assert 0 < ready.send_in_us <= 30_000 + 200_000 + 500_000, "due within a period of the margin (+ CI slack)"
        assert 0 <= ready.start_held_us <= got.t_us - stamp
        assert ready.start_held_us + ready.send_in_us >= 30_000 - 1, "due ≥ 30 ms after the start arrived"
        at = client.first_send_us(ready, stamp, got.t_us)
        network = got.t_us - stamp - ready.start_held_us
        assert at == got.t_us - network // 2 + ready.send_in_us
        assert conv.sent_us[0] >= at, "chunk 0 is never sent before the hinted time"
        bare = await client.converse(
            ch, chunks, metadata=AUTH, start=client.start_event(), follow_hint=False, stamp_start=False
        )
    check_complete(bare, 3)
    assert bare.ready is not None and bare.ready.send_in_us == 0
    assert client.first_send_us(bare.ready, 0, client.now_us()) is None


async def test_sixteen_concurrent_and_a_late_joiner(stack: Stack) -> None:
    chunks = client.split_chunks(tone(2.4), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        many = [asyncio.create_task(client.converse(ch, chunks, metadata=AUTH)) for _ in range(16)]
        await eventually(lambda: stack.placed() >= 16, what="16 sessions placed")
        joiner = await client.converse(ch, chunks[:4], metadata=AUTH)
        convs = await asyncio.gather(*many)
    check_complete(joiner, 4)
    for conv in convs:
        check_complete(conv, 12)
        # the joiner did not disturb anyone: every chunk of every session was processed on time
        assert not any(r.event.audio.timing.substituted for r in conv.of("audio"))
    assert not any(r.event.HasField("warning") for c in convs for r in c.received)
    await eventually(lambda: stack.active() == 0, what="all slots released")


async def test_same_input_same_output_regardless_of_batch(stack: Stack) -> None:
    """Batching is invisible: a session's outputs do not depend on who else was in its step."""
    chunks = client.split_chunks(tone(1.2, hz=180), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        alone = await client.converse(ch, chunks, metadata=AUTH, realtime=False)
        noise = client.split_chunks(tone(1.2, hz=400, amp=0.6), CHUNK)
        crowd = await asyncio.gather(
            client.converse(ch, chunks, metadata=AUTH, realtime=False),
            *(client.converse(ch, noise, metadata=AUTH, realtime=False) for _ in range(3)),
        )
    a = [list(r.event.audio.control) for r in alone.of("audio")]
    b = [list(r.event.audio.control) for r in crowd[0].of("audio")]
    assert a == b


async def test_turn_events_are_consistent(stack: Stack) -> None:
    chunks = client.split_chunks(tone(4.0, amp=0.5), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(ch, chunks, metadata=AUTH, realtime=False)
    assert conv.code == grpc.StatusCode.OK
    speaking = False
    for r in conv.of("turn"):
        t = r.event.turn
        if t.type == pb.MODEL_TURN_START:
            assert not speaking
            speaking = True
        elif t.type in (pb.MODEL_TURN_END, pb.USER_BARGE_IN):
            assert speaking
            speaking = False


async def test_health_and_reflection(stack: Stack) -> None:
    """Envoy's listener answers health (the picker's: SERVING while an engine answers) and nothing else but
    ``Converse``; the engine offers health per service and reflection."""
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        # a unary call: Envoy's trailers-only answer can race no client write (a streaming stub's first write may
        # meet it, and gRPC's aio client then reports "Internal error from Core" instead, see docs/envoy.md)
        unrouted_rpc = ch.unary_unary("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.aio.AioRpcError) as unrouted:
            await unrouted_rpc(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString(), timeout=5)
        assert unrouted.value.code() == grpc.StatusCode.UNIMPLEMENTED, unrouted.value
    async with grpc.aio.insecure_channel(stack.engine_addr) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="duplex.v1.Duplex"), timeout=5
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        assert "duplex.v1.Duplex" in await ask(reflection_pb2_grpc.ServerReflectionStub(ch))


async def ask(stub: reflection_pb2_grpc.ServerReflectionStub) -> list[str]:
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    async for resp in stub.ServerReflectionInfo(iter([req]), timeout=5):
        return [s.name for s in resp.list_services_response.service]
    return []
