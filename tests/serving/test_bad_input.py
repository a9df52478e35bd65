"""Bad-input matrix: each case gets its exact gRPC status with a message naming the field, while a live
"witness" conversation on the same replica completes untouched and no slot leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import AUTH, Stack, tone
from .helpers import eventually

CHUNK = 3200
GOOD = client.split_chunks(tone(0.6), CHUNK)


def audio(seq: int, pcm: bytes = GOOD[0]) -> pb.ClientEvent:
    return client.audio_event(seq, pcm)


def _ser(m: bytes | pb.ClientEvent) -> bytes:
    return m if isinstance(m, bytes) else m.SerializeToString()


async def send_raw(
    channel: grpc.aio.Channel, messages: Sequence[bytes | pb.ClientEvent], metadata: Sequence[tuple[str, str]] = AUTH
) -> tuple[grpc.StatusCode, str]:
    """Send exactly ``messages`` and read until the server ends the call; keeps the stream open afterwards
    so that the status is the server's answer, not a half-close."""
    done = asyncio.Event()

    async def reqs() -> object:
        for m in messages:
            yield m
        await done.wait()

    call = channel.stream_stream(
        "/duplex.v1.Duplex/Converse", request_serializer=_ser, response_deserializer=pb.ServerEvent.FromString
    )(reqs(), metadata=tuple(metadata))
    try:
        async for _ in call:
            pass
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    finally:
        done.set()


START = client.start_event()
CASES: dict[str, tuple[list[bytes | pb.ClientEvent], grpc.StatusCode, str]] = {
    "wrong_sample_rate": (
        [client.start_event(sample_rate=44100)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.format.sample_rate",
    ),
    "stereo": (
        [pb.ClientEvent(start=pb.SessionStart(format=pb.AudioFormat(sample_rate=16000, channels=2)))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.format.channels",
    ),
    "wrong_chunk_ms": ([client.start_event(chunk_ms=120)], grpc.StatusCode.INVALID_ARGUMENT, "start.chunk_ms"),
    "chunk_wrong_length": ([START, audio(0, GOOD[0][:1000])], grpc.StatusCode.INVALID_ARGUMENT, "audio.pcm"),
    "odd_byte_count": ([START, audio(0, GOOD[0][:-1])], grpc.StatusCode.INVALID_ARGUMENT, "audio.pcm"),
    "garbage_first": ([b"\xff\xfe\xfd garbage \x00\x01"], grpc.StatusCode.INVALID_ARGUMENT, "ClientEvent"),
    "garbage_mid_stream": (
        [START, audio(0), b"\x0a\xff\xff\xff\xff\x0f"],
        grpc.StatusCode.INVALID_ARGUMENT,
        "ClientEvent",
    ),
    "empty_event": ([START, pb.ClientEvent()], grpc.StatusCode.INVALID_ARGUMENT, "ClientEvent"),
    "oversized": ([START, audio(0, b"\x00" * (2 << 20))], grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    "out_of_order_seq": ([START, audio(0), audio(2)], grpc.StatusCode.INVALID_ARGUMENT, "audio.seq 2"),
    "duplicate_seq": ([START, audio(0), audio(1), audio(1)], grpc.StatusCode.INVALID_ARGUMENT, "duplicate"),
    "seq_not_from_zero": ([START, audio(5)], grpc.StatusCode.INVALID_ARGUMENT, "audio.seq 5"),
    "audio_before_start": ([audio(0)], grpc.StatusCode.FAILED_PRECONDITION, "before session start"),
    "second_start": ([START, audio(0), START], grpc.StatusCode.FAILED_PRECONDITION, "already started"),
    "unknown_model": ([client.start_event(model="gpt-9")], grpc.StatusCode.NOT_FOUND, "start.model"),
    "unknown_tool": ([client.start_event(tools=["rm-rf"])], grpc.StatusCode.INVALID_ARGUMENT, "start.tools"),
    "client_clock_out_of_range": (
        [pb.ClientEvent(start=pb.SessionStart(client_time_us=(1 << 63) - 1))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.client_time_us",
    ),
    "client_clock_negative": (
        [pb.ClientEvent(start=pb.SessionStart(client_time_us=-5))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.client_time_us",
    ),
    "sampling_not_taken": (
        [pb.ClientEvent(start=pb.SessionStart(top_k=5))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.top_k: the duplex family samples with the replica's settings only",
    ),
    "video_wrong_size": (
        [START, pb.ClientEvent(video=pb.VideoFrame(seq=0, rgb=b"\x00" * 12, width=2, height=2))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "video.width/height",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input(stack: Stack, case: str) -> None:
    messages, code, needle = CASES[case]
    witness_chunks = client.split_chunks(tone(1.0), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        witness = asyncio.create_task(client.converse(ch, witness_chunks, metadata=AUTH))
        await eventually(lambda: stack.placed() >= 1, what="witness placed")
        got, details = await send_raw(ch, messages)
        w = await witness
    assert got == code, f"{case}: {got} {details}"
    assert needle in details, details
    assert w.code == grpc.StatusCode.OK and w.audio_seqs() == list(range(5)), w.details
    await eventually(lambda: stack.active() == 0, what="no leaked session")


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("x-api-key", "nope"),)])
async def test_bad_api_key(stack: Stack, metadata: tuple[tuple[str, str], ...]) -> None:
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        got, details = await send_raw(ch, [START], metadata=metadata)
    assert got == grpc.StatusCode.UNAUTHENTICATED, details
    assert "API key" in details
    assert stack.active() == 0


async def test_x_api_key_accepted(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(ch, GOOD[:2], metadata=(("x-api-key", "other-key"),), realtime=False)
    assert conv.code == grpc.StatusCode.OK and conv.audio_seqs() == [0, 1]


async def test_client_vanishing_mid_stream_leaks_nothing(stack: Stack) -> None:
    chunks = client.split_chunks(tone(2.0), CHUNK)
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        witness = asyncio.create_task(client.converse(ch, chunks, metadata=AUTH))
        quitter = asyncio.create_task(client.converse(ch, chunks, metadata=AUTH))
        await eventually(lambda: stack.placed() >= 2, what="both placed")
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        await eventually(lambda: stack.active() == 1, what="quitter's slot freed")
        w = await witness
    assert w.code == grpc.StatusCode.OK and w.audio_seqs() == list(range(10))
    await eventually(lambda: stack.active() == 0 and stack.placed() == 0, what="all slots free")


async def test_replica_full_is_resource_exhausted_with_retry(small_stack: Stack) -> None:
    chunks = client.split_chunks(tone(1.0), CHUNK)
    async with grpc.aio.insecure_channel(small_stack.front_addr) as ch:
        live = [asyncio.create_task(client.converse(ch, chunks)) for _ in range(2)]
        await eventually(lambda: small_stack.active() == 2, what="replica full")
        await asyncio.to_thread(small_stack.poll_load)  # the picker sees the full replica now, not at its next poll
        rejected = await client.converse(ch, chunks)
        done = await asyncio.gather(*live)
    assert rejected.code == grpc.StatusCode.RESOURCE_EXHAUSTED, rejected.details
    assert "full" in rejected.details
    assert dict(rejected.trailing).get("retry-after-ms") == "1000"
    assert all(c.code == grpc.StatusCode.OK for c in done)


async def test_engine_full_direct(small_stack: Stack) -> None:
    """The engine enforces its capacity itself (a picker racing its load report is still safe)."""
    chunks = client.split_chunks(tone(1.0), CHUNK)
    async with grpc.aio.insecure_channel(small_stack.engine_addr) as ch:
        live = [asyncio.create_task(client.converse(ch, chunks)) for _ in range(2)]
        await eventually(lambda: small_stack.active() == 2, what="replica full")
        rejected = await client.converse(ch, chunks)
        await asyncio.gather(*live)
    assert rejected.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(rejected.trailing).get("retry-after-ms") == "1000"


async def test_slow_reader_is_closed(stack: Stack) -> None:
    """A client that sends but never reads is closed with RESOURCE_EXHAUSTED naming it; its slot is freed."""
    chunks = client.split_chunks(tone(60.0, amp=0.8), CHUNK)
    # a tiny receive window, so that unread events back up on the server instead of in socket buffers
    opts = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    async with grpc.aio.insecure_channel(stack.engine_addr, options=opts) as ch:
        stop = asyncio.Event()

        async def reqs() -> object:
            yield START
            for i, pcm in enumerate(chunks):
                yield audio(i, pcm)
            await stop.wait()

        rpc = ch.stream_stream(
            "/duplex.v1.Duplex/Converse", request_serializer=_ser, response_deserializer=pb.ServerEvent.FromString
        )(reqs())
        await eventually(lambda: stack.active() == 1, what="session admitted")
        await eventually(lambda: stack.active() == 0, deadline_s=60, what="slow reader closed")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in rpc:
                pass
        stop.set()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "not reading" in (err.value.details() or "")
