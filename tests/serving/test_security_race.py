"""The status the server meant reaches the client, under concurrency: a few hundred bad sessions that keep
writing fast after their bad message get INVALID_ARGUMENT naming the field — never ``INTERNAL: Internal error
from Core`` (grpc's Python client reports that when a write is in flight as the call ends; before the fix about
two in five such sessions did) — through the front door (Envoy and the session picker) and on the engine
directly, while a witness conversation on the same replica sees no error, no warning and every chunk."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import grpc
import pytest

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import AUTH, Stack, tone
from .helpers import eventually

CHUNK = 3200
GOOD = client.split_chunks(tone(0.2), CHUNK)[0]
SESSIONS = 120
CONCURRENT = 12
TRAILING_WRITES = 30
"""Messages each bad session writes after its bad one, as fast as the stream takes them."""

BAD: dict[str, tuple[bytes, str]] = {
    "out_of_order": (client.audio_event(2, GOOD).SerializeToString(), "audio.seq 2"),
    "garbage": (b"\xff\xfe\xfd garbage", "ClientEvent"),
    "short_pcm": (client.audio_event(1, GOOD[:100]).SerializeToString(), "audio.pcm"),
    "big_text": (pb.ClientEvent(text=pb.TextInput(text="x" * 5000)).SerializeToString(), "text.text"),
}


async def fast_session(
    ch: grpc.aio.Channel, messages: list[bytes], metadata: tuple[tuple[str, str], ...], half_close: bool
) -> tuple[grpc.StatusCode, str]:
    """Write ``messages`` at once, as fast as the stream takes them, from the moment the call is accepted (its
    response headers: a client must not write before them, docs/envoy.md); then half-close or wait open for
    the end."""
    finished = asyncio.Event()
    calls: list[grpc.aio.StreamStreamCall] = []

    async def reqs() -> AsyncIterator[bytes]:
        await calls[0].initial_metadata()
        if calls[0].done():  # refused before it was accepted: trailers only
            return
        for m in messages:
            yield m
        if not half_close:
            await finished.wait()

    call = ch.stream_stream("/duplex.v1.Duplex/Converse")(reqs(), metadata=metadata)
    calls.append(call)
    try:
        async for _ in call:
            pass
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    finally:
        finished.set()


async def fast_bad_session(ch: grpc.aio.Channel, bad: bytes, half_close: bool) -> tuple[grpc.StatusCode, str]:
    """Start, one good chunk, the bad message, then keep writing; half-close at the end or wait open."""
    trailing = [client.audio_event(3 + i, GOOD).SerializeToString() for i in range(TRAILING_WRITES)]
    start, first = client.start_event().SerializeToString(), client.audio_event(0, GOOD).SerializeToString()
    return await fast_session(ch, [start, first, bad, *trailing], AUTH, half_close)


@pytest.mark.parametrize("via", ["front", "engine"])
async def test_bad_sessions_writing_fast_get_their_status(stack: Stack, via: str) -> None:
    addr = stack.front_addr if via == "front" else stack.engine_addr
    kinds = sorted(BAD)
    got: collections.Counter[tuple[str, grpc.StatusCode, bool]] = collections.Counter()
    wrong: list[tuple[str, grpc.StatusCode, str]] = []
    gate = asyncio.Semaphore(CONCURRENT)
    async with grpc.aio.insecure_channel(addr) as ch:
        witness = asyncio.create_task(
            client.converse(ch, client.split_chunks(tone(3.0), CHUNK), metadata=AUTH, realtime=True)
        )
        await eventually(lambda: stack.placed() >= 1, what="witness placed")

        async def one(i: int) -> None:
            kind = kinds[i % len(kinds)]
            async with gate:
                code, details = await fast_bad_session(ch, BAD[kind][0], half_close=bool(i % 3))
            got[(kind, code, BAD[kind][1] in details)] += 1
            if code != grpc.StatusCode.INVALID_ARGUMENT:
                wrong.append((kind, code, details))

        await asyncio.gather(*(one(i) for i in range(SESSIONS)))
        w = await witness
    assert not wrong, f"{len(wrong)}/{SESSIONS} sessions got another status: {wrong[:5]} (all: {dict(got)})"
    assert all(named for (_, _, named) in got), f"a status did not name its field: {dict(got)}"
    assert w.code == grpc.StatusCode.OK, w.details
    assert w.audio_seqs() == list(range(15)), w.audio_seqs()
    assert not w.of("warning") and not w.of("error"), [r.event for r in w.of("warning") + w.of("error")]
    await eventually(lambda: stack.active() == 0, deadline_s=30, what="no leaked session")


WRONG_KEY = (("authorization", "Bearer not-a-key"),)
REFUSED_SESSIONS = 120


async def fast_refused_session(ch: grpc.aio.Channel, half_close: bool) -> tuple[grpc.StatusCode, str]:
    """A wrong key, writing at once and as fast as the stream takes it (start, then audio)."""
    audio = [client.audio_event(i, GOOD).SerializeToString() for i in range(TRAILING_WRITES)]
    return await fast_session(ch, [client.start_event().SerializeToString(), *audio], WRONG_KEY, half_close)


async def test_refused_keys_writing_fast_get_unauthenticated(stack: Stack) -> None:
    """All at once, a hundred-odd sessions with a wrong key, each ready to stream audio from its first moment:
    each gets UNAUTHENTICATED from Envoy's trailers-only refusal (the picker's answer; never ``INTERNAL``), and
    the status says why without echoing the key."""
    got: collections.Counter[grpc.StatusCode] = collections.Counter()
    wrong: list[tuple[grpc.StatusCode, str, bool]] = []
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:

        async def one(i: int) -> None:
            code, details = await fast_refused_session(ch, half_close=bool(i % 2))
            got[code] += 1
            if code != grpc.StatusCode.UNAUTHENTICATED or details != "invalid API key":
                wrong.append((code, details, bool(i % 2)))

        await asyncio.gather(*(one(i) for i in range(REFUSED_SESSIONS)))
    assert not wrong, f"{len(wrong)}/{REFUSED_SESSIONS} sessions got another status: {wrong[:5]} (all: {dict(got)})"
    assert stack.active() == 0
