"""Session resumption over real gRPC on loopback, through Envoy and the session picker: a conversation whose
connection is cut (a TCP proxy between client and Envoy closes every socket) resumes in the same slot with its
state and produces model-time outputs bit-identical to an uninterrupted run; past the grace (on the engine's
injected clock) the slot is freed and a resume is refused naming the expiry; forged tokens, a resume naming a
replica the picker does not know, another key's resume and a second concurrent resume are refused."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from duplex.serving import client
from duplex.serving.engine.server import EngineServer
from duplex.serving.engine.session import Conversation
from duplex.serving.resume_token import RESUME_REPLICA_METADATA
from duplex.serving.spec import EngineSpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import API_KEY, AUTH, Stack, start_stack, stop_stack
from .test_batch_invariance import outputs
from .test_talk import SteppingClock

CHUNK = 3200
OTHER_KEY = "test-key-2"
OTHER_AUTH = (("authorization", f"Bearer {OTHER_KEY}"),)
GRACE_S = 10.0


class ShiftedClock:
    """Monotonic time plus an offset a test advances: the engine's resume grace passes without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class ResumeStack:
    stack: Stack
    clock: ShiftedClock

    @property
    def engine(self) -> EngineServer:
        return self.stack.engine

    @property
    def front_addr(self) -> str:
        return self.stack.front_addr

    def resume(self, auth: Any = AUTH) -> tuple[tuple[str, str], ...]:
        """``auth`` plus the replica holding the session, as a client's resume carries it (``client.converse``):
        the picker routes the stream there instead of placing a new session."""
        return (*auth, (RESUME_REPLICA_METADATA, self.stack.engine_addr))

    def on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return self.stack.thread.run(call())


@pytest.fixture(scope="module")
def rstack(tiny_model: Any) -> Iterator[ResumeStack]:
    # lost_after_chunks is high so that no silence stands in for a chunk delayed by the cut: the comparison is
    # about resumption, not about the loss policy (which applies to a resumed session as to any other)
    spec = EngineSpec(
        host="127.0.0.1",
        metrics_port=0,
        max_sessions=4,
        cohorts=1,
        max_send_backlog=400,
        batch_invariant=True,
        lost_after_chunks=1000,
        resume_grace_s=GRACE_S,
    )
    clock = ShiftedClock()
    s = start_stack(spec, copy.deepcopy(tiny_model), keys=[API_KEY, OTHER_KEY], clock=clock)
    yield ResumeStack(s, clock)
    stop_stack(s)


@dataclass
class CuttingProxy:
    """A loopback TCP proxy whose ``cut()`` closes every open connection (a network drop, both ways)."""

    target: tuple[str, int]
    server: asyncio.Server | None = None
    open: list[asyncio.StreamWriter] = field(default_factory=list)
    cuts: int = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.open += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.cuts += 1
        for w in self.open:
            w.transport.abort()  # RST: nothing buffered is delivered
        self.open.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def speechlike(seconds: float) -> np.ndarray:
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    x = 0.4 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    return (x * 32767).astype(np.int16)


async def hold(
    addr: str, samples: np.ndarray, on_event: Any = None, resume: bool = True, auth: Any = AUTH, paced: bool = False
) -> client.Conversation:
    """A conversation of ``samples``: sent on a stepping clock (the schedule without the waiting), or ``paced``
    in real time (a cut mid-way then always finds chunks, and the EndOfStream, not yet sent)."""
    async with grpc.aio.insecure_channel(addr, options=client.RECONNECT_OPTIONS) as ch:
        return await client.converse(
            ch,
            client.split_chunks(samples, CHUNK),
            metadata=auth,
            clock=None if paced else SteppingClock(client.now_us()),
            on_event=on_event,
            resume=resume,
        )


def counter(metric: Any) -> float:
    return float(metric._value.get())


async def wait_until(pred: Any, what: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_cut_conversation_resumes_bit_identical(rstack: ResumeStack, speech: np.ndarray) -> None:
    # a spoken question and silence, so the model takes the turn and speaks (whole chunks: every seq answered)
    voice = np.concatenate([speech, np.zeros(-len(speech) % CHUNK, np.int16)])
    uninterrupted = await hold(rstack.front_addr, voice)
    resumed_before = counter(rstack.engine.metrics.resumed)
    host, port = rstack.front_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    try:

        def cut_mid_way(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 12 and not proxy.cuts:
                proxy.cut()

        cut = await hold(addr, voice, on_event=cut_mid_way, paced=True)  # cut while it is still talking
    finally:
        await proxy.close()
    assert proxy.cuts >= 1
    assert cut.code == grpc.StatusCode.OK, cut.details
    assert len(cut.resumptions) == 1 and cut.resumptions[0].resumed_us > 0, cut.resumptions
    assert counter(rstack.engine.metrics.resumed) == resumed_before + 1
    # every chunk answered exactly once: nothing lost, nothing doubled by the replay
    assert cut.audio_seqs() == list(range(len(voice) // CHUNK))
    expected = outputs(uninterrupted)
    assert any(pcm for _, _, pcm in expected["audio"]), "the model must speak for the comparison to mean much"
    assert outputs(cut) == expected
    assert [r.event.ready.resumed for r in cut.of("ready")] == [False, True]


async def raw_start(
    addr: str, start: pb.SessionStart, auth: Any = AUTH, hold_open: asyncio.Event | None = None
) -> tuple[grpc.StatusCode, str, pb.ServerEvent | None]:
    """Open a stream with ``start`` and read its first answer; with ``hold_open`` keep the stream attached
    until it is set (then end it)."""
    first: list[pb.ServerEvent] = []
    async with grpc.aio.insecure_channel(addr) as ch:
        rpc = ch.stream_stream(
            "/duplex.v1.Duplex/Converse",
            request_serializer=pb.ClientEvent.SerializeToString,
            response_deserializer=pb.ServerEvent.FromString,
        )

        async def requests() -> AsyncIterator[pb.ClientEvent]:
            yield pb.ClientEvent(start=start)
            if hold_open is not None:
                await hold_open.wait()
            yield pb.ClientEvent(end=pb.EndOfStream())

        try:
            async for ev in rpc(requests(), metadata=auth):
                if not first:
                    first.append(ev)
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or "", first[0] if first else None
    return grpc.StatusCode.OK, "", first[0] if first else None


async def parked_session(rstack: ResumeStack, auth: Any = AUTH) -> str:
    """A session whose connection was cut and not resumed: its token, once the engine parked it."""
    host, port = rstack.front_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    parked_before = rstack.engine.resumes.parked_count()
    try:

        def cut_after_3(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 3 and not proxy.cuts:
                proxy.cut()

        conv = await hold(addr, speechlike(3.0), on_event=cut_after_3, resume=False, auth=auth, paced=True)
    finally:
        await proxy.close()
    assert conv.code == grpc.StatusCode.UNAVAILABLE and conv.ready is not None
    await wait_until(lambda: rstack.on_loop(rstack.engine.resumes.parked_count) > parked_before, "the engine to park")
    return conv.ready.resume_token


async def test_a_no_resume_session_gets_no_token_and_frees_its_slot_when_cut(rstack: ResumeStack) -> None:
    """``SessionStart.no_resume`` (load generators): no token, and a cut frees the slot at once, within the
    grace, where a resumable session would hold it (``parked_session``)."""
    active_before = rstack.on_loop(rstack.engine.scheduler.active_count)  # type: ignore[union-attr]
    parked_before = rstack.on_loop(rstack.engine.resumes.parked_count)
    host, port = rstack.front_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    try:

        def cut_after_3(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 3 and not proxy.cuts:
                proxy.cut()

        async with grpc.aio.insecure_channel(addr) as ch:
            conv = await client.converse(
                ch,
                client.split_chunks(speechlike(3.0), CHUNK),
                start=client.start_event(no_resume=True),
                metadata=AUTH,
                clock=SteppingClock(client.now_us()),
                on_event=cut_after_3,
            )
    finally:
        await proxy.close()
    assert conv.ready is not None and conv.ready.resume_token == "" and conv.ready.resume_grace_ms == 0
    assert conv.code == grpc.StatusCode.UNAVAILABLE and not conv.resumptions  # nothing to resume with
    await wait_until(
        lambda: rstack.on_loop(rstack.engine.scheduler.active_count) == active_before,  # type: ignore[union-attr]
        "the slot to be freed",
    )
    assert rstack.on_loop(rstack.engine.resumes.parked_count) == parked_before  # the clock never moved


async def test_b_past_the_grace_the_slot_is_freed_and_resume_names_the_expiry(rstack: ResumeStack) -> None:
    active_before = rstack.on_loop(rstack.engine.scheduler.active_count)  # type: ignore[union-attr]
    expired_before = counter(rstack.engine.metrics.resume_expired)
    token = await parked_session(rstack)
    # the parked session still holds its slot
    assert rstack.on_loop(rstack.engine.scheduler.active_count) == active_before + 1  # type: ignore[union-attr]
    assert rstack.engine.metrics.parked_sessions._value.get() >= 1
    rstack.clock.offset += GRACE_S + 1  # the grace passes on the engine's clock
    await wait_until(
        lambda: rstack.on_loop(rstack.engine.scheduler.active_count) == active_before,  # type: ignore[union-attr]
        "the expired slot to be freed",
    )
    assert counter(rstack.engine.metrics.resume_expired) == expired_before + 1
    code, details, _ = await raw_start(rstack.front_addr, pb.SessionStart(resume_token=token), rstack.resume())
    assert code == grpc.StatusCode.NOT_FOUND
    assert "resume_token" in details and "grace" in details and "expired" in details


async def test_c_forged_tokens_and_another_keys_resume_are_refused(rstack: ResumeStack) -> None:
    token = await parked_session(rstack)
    prefix, handle, secret = token.split(".")
    forged_secret = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    lost = (*AUTH, (RESUME_REPLICA_METADATA, "10.0.0.1:7070"))  # a replica the picker does not know
    ours = rstack.resume()
    cases = [
        (f"{prefix}.{handle}.{forged_secret}", ours, grpc.StatusCode.NOT_FOUND, "no resumable session"),
        (f"{prefix}.0123456789abcdef.{secret}", ours, grpc.StatusCode.NOT_FOUND, "no resumable session"),
        (token, lost, grpc.StatusCode.UNAVAILABLE, "is not one of this picker's replicas"),
        ("g1.!!!.x", ours, grpc.StatusCode.INVALID_ARGUMENT, "resume_token: malformed"),
        ("not-a-token", ours, grpc.StatusCode.INVALID_ARGUMENT, "resume_token: malformed"),
        ("e1.only-two", ours, grpc.StatusCode.INVALID_ARGUMENT, "resume_token: malformed"),
    ]
    for bad, metadata, want, words in cases:
        code, details, _ = await raw_start(rstack.front_addr, pb.SessionStart(resume_token=bad), auth=metadata)
        assert (code, words in details) == (want, True), (bad, code, details)
    code, details, _ = await raw_start(
        rstack.front_addr, pb.SessionStart(resume_token=token), auth=rstack.resume(OTHER_AUTH)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another API key" in details
    # none of these consumed the session: its own key resumes it, and a second resume meanwhile is refused
    attached = asyncio.Event()
    owner = asyncio.create_task(
        raw_start(rstack.front_addr, pb.SessionStart(resume_token=token), rstack.resume(), attached)
    )
    await wait_until(lambda: rstack.on_loop(rstack.engine.resumes.parked_count) == 0, "the owner's resume")
    code, details, _ = await raw_start(rstack.front_addr, pb.SessionStart(resume_token=token), rstack.resume())
    assert code == grpc.StatusCode.ABORTED and "attached to a live stream" in details
    attached.set()
    code, details, first = await owner
    assert code == grpc.StatusCode.OK, details
    assert first is not None and first.ready.resumed and first.ready.resume_next_seq >= 3


async def test_c_the_step_thread_learns_of_a_park_and_a_resume(rstack: ResumeStack) -> None:
    """The event loop tells the planner through the scheduler's inbox that a session is parked (its cohort's
    steps stop waiting for its chunks: tests/serving/test_planner.py) and that it is resumed (awaited again)."""
    token = await parked_session(rstack)
    handle = token.split(".")[1]
    conv = rstack.on_loop(lambda: rstack.engine.resumes.entries[handle].conversation)
    await wait_until(lambda: conv.slot_session.parked, "the planner to learn of the park")
    attached = asyncio.Event()
    owner = asyncio.create_task(
        raw_start(rstack.front_addr, pb.SessionStart(resume_token=token), rstack.resume(), attached)
    )
    await wait_until(lambda: not conv.slot_session.parked, "the planner to learn of the resume")
    attached.set()
    code, details, first = await owner
    assert code == grpc.StatusCode.OK, details
    assert first is not None and first.ready.resumed


async def test_d_a_dropped_streams_reader_cancelled_as_its_stream_ends_stays_cancelled(rstack: ResumeStack) -> None:
    # The failure point of a silent loss: the old stream's reader waits after a half-close to learn whether the
    # peer died; the RPC ends (its done callback sets ``stream_done``) and the stream is parked, cancelling the
    # reader, in the same loop iteration. The reader must stop there: one that went on would mark the session's
    # stream lost after the park, and its next (resumed) stream would end at once with OK, its chunks unread.
    engine = rstack.engine
    session = Conversation("s", CHUNK, 1280, 8, 4, text=engine.served.text_decoder())
    session.resume_handle = "h"
    stream_done = asyncio.Event()
    lost: list[bool] = []
    reader = asyncio.create_task(engine._peer_died(session, stream_done, lambda: lost.append(True)))
    await asyncio.sleep(0)  # the reader is waiting for the stream's end
    stream_done.set()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert lost == [], "a cancelled reader marked a stream lost"


async def test_d_a_resumed_stream_is_not_ended_by_its_dropped_streams_reader(
    rstack: ResumeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each stream's reader reports its own stream lost. Injected: right before every resume claims the parked
    # session, the readers of its earlier streams report theirs lost again (as a reader that outlived its
    # stream would). The resumed stream must go on: every chunk answered, OK.
    engine = rstack.engine
    on_lost: list[Any] = []
    read, claim = engine._read, engine.resumes.claim

    async def recording_read(*args: Any) -> None:
        on_lost.append(args[-1])
        await read(*args)

    def claim_after_stale_readers(token: str, key_id: str) -> Any:
        for lost in on_lost:
            lost()
        return claim(token, key_id)

    monkeypatch.setattr(engine, "_read", recording_read)
    monkeypatch.setattr(engine.resumes, "claim", claim_after_stale_readers)
    host, port = rstack.front_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    try:

        def cut_after_4(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 4 and not proxy.cuts:
                proxy.cut()

        conv = await hold(addr, speechlike(3.0), on_event=cut_after_4, paced=True)
    finally:
        await proxy.close()
    assert proxy.cuts >= 1 and len(on_lost) >= 2
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert len(conv.resumptions) == 1 and conv.resumptions[0].resumed_us > 0, conv.resumptions
    assert conv.audio_seqs() == list(range(len(conv.sent_us))) and len(conv.sent_us) == 15


async def test_d_a_stream_the_engine_lost_while_still_open_ends_unavailable_and_resumes(
    rstack: ResumeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected: the first stream's reader reports its stream lost after 5 events though the stream is still
    # open. The engine must not end that stream OK (the client would stop with its input unanswered): it ends
    # UNAVAILABLE, the session parked, and the client resumes it.
    engine = rstack.engine
    read = engine._read
    reads = [0]

    async def losing_read(it: AsyncIterator[Any], session: Any, resumed: bool, done: Any, on_lost: Any) -> None:
        reads[0] += 1
        if reads[0] > 1:
            await read(it, session, resumed, done, on_lost)
            return

        async def five_events() -> AsyncIterator[Any]:
            n = 0
            async for ev in it:
                yield ev
                n += 1
                if n == 5:
                    on_lost()
                    await asyncio.Event().wait()  # reads no more: cancelled when the stream ends

        await read(five_events(), session, resumed, done, lambda: None)

    monkeypatch.setattr(engine, "_read", losing_read)
    conv = await hold(rstack.front_addr, speechlike(3.0), paced=True)
    assert conv.code == grpc.StatusCode.OK, conv.details
    assert [r.code for r in conv.resumptions] == [grpc.StatusCode.UNAVAILABLE] and conv.resumptions[0].resumed_us
    assert conv.audio_seqs() == list(range(15)) and len(conv.sent_us) == 15
