"""Real-time discipline: a client that stalls has silence substituted for its lost chunks (and is told),
its late chunks are dropped when they finally come, and the session sharing its cohort never waits for it."""

from __future__ import annotations

import asyncio
import time

import grpc

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import AUTH, Stack, tone

CHUNK = 3200


async def stalling(
    channel: grpc.aio.Channel,
    chunks: list[bytes],
    stall_after: int,
    stall_s: float,
) -> list[pb.ServerEvent]:
    """Send chunks in real time, but stop for ``stall_s`` after ``stall_after`` chunks, then send the rest
    (the held-back ones first, in a burst, as a client recovering from a network stall would)."""
    got: list[pb.ServerEvent] = []
    ready = asyncio.Event()

    async def reqs() -> object:
        yield client.start_event()
        await ready.wait()
        t0 = time.monotonic()
        for seq, pcm in enumerate(chunks):
            if seq == stall_after:
                await asyncio.sleep(stall_s)
            await asyncio.sleep(max(0.0, t0 + seq * 0.2 - time.monotonic()))  # behind schedule: a burst
            yield client.audio_event(seq, pcm)
        yield pb.ClientEvent(end=pb.EndOfStream())

    call = channel.stream_stream(
        "/duplex.v1.Duplex/Converse",
        request_serializer=pb.ClientEvent.SerializeToString,
        response_deserializer=pb.ServerEvent.FromString,
    )(reqs(), metadata=AUTH)
    async for ev in call:
        got.append(ev)
        if ev.HasField("ready"):
            ready.set()
    return got


async def test_stalled_client_gets_silence_and_others_are_unaffected(one_cohort_stack: Stack) -> None:
    chunks = client.split_chunks(tone(3.0), CHUNK)
    async with grpc.aio.insecure_channel(one_cohort_stack.front_addr) as ch:
        witness_task = asyncio.create_task(client.converse(ch, chunks, metadata=AUTH))
        events = await stalling(ch, chunks, stall_after=3, stall_s=1.2)
        witness = await witness_task
    warnings = [e.warning for e in events if e.HasField("warning")]
    lost = {w.seq for w in warnings if w.code == "CHUNK_LOST"}
    dropped = {w.seq for w in warnings if w.code == "LATE_CHUNK_DROPPED"}
    audio = [e.audio for e in events if e.HasField("audio")]
    assert lost, "a 1.2 s stall must lose chunks (lost_after_chunks=3 steps)"
    assert lost == dropped, "every chunk replaced by silence is dropped when it finally arrives"
    assert [a.seq for a in audio] == list(range(len(chunks))), "one output per chunk, in order, none twice"
    assert {a.seq for a in audio if a.timing.substituted} == lost
    assert witness.code == grpc.StatusCode.OK and witness.audio_seqs() == list(range(len(chunks)))
    # the witness never waits for the stalled session: nothing substituted, no warnings, no step held back
    # by it (a bound far below the stall; `late` alone can come from CPU contention on a shared machine)
    assert not any(r.event.audio.timing.substituted for r in witness.of("audio"))
    assert not witness.of("warning")
    waits = [r.event.audio.timing.queue_wait_ms for r in witness.of("audio")]
    assert max(waits) < 400, waits
