"""Session resumption over real gRPC on loopback: a conversation whose connection is cut (a TCP proxy between
client and gateway closes every socket) resumes in the same slot with its state and produces model-time
outputs bit-identical to an uninterrupted run; past the grace (on the engine's injected clock) the slot is
freed and a resume is refused naming the expiry; forged tokens, another key's resume and a second concurrent
resume are refused."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.serving.engine.server import EngineServer
from duplex.serving.gateway.auth import KeyRing, key_line
from duplex.serving.gateway.server import GatewayServer
from duplex.serving.ports import free_port
from duplex.serving.resume_token import unwrap, wrap
from duplex.serving.spec import EngineSpec, GatewaySpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import API_KEY, AUTH, LoopThread, wait_serving
from .test_batch_invariance import outputs
from .test_cli import Proc
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
    engine: EngineServer
    gateway: GatewayServer
    gateway_addr: str
    clock: ShiftedClock
    thread: LoopThread

    def on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return self.thread.run(call())


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
    lt = LoopThread()

    async def up() -> ResumeStack:
        engine = EngineServer(spec, ModelSource(), model=copy.deepcopy(tiny_model), bind_port=0, clock=clock)
        eport = await engine.start()
        gspec = GatewaySpec(host="127.0.0.1", metrics_port=0, engines=[f"127.0.0.1:{eport}"], health_interval_s=0.2)
        gateway = GatewayServer(gspec, keys=KeyRing({API_KEY, OTHER_KEY}), bind_port=0)
        gport = await gateway.start()
        return ResumeStack(engine, gateway, f"127.0.0.1:{gport}", clock, lt)

    s: ResumeStack = lt.run(up())
    wait_serving(s.gateway_addr)
    yield s

    async def down() -> None:
        await s.gateway.stop(0.5)
        await s.engine.stop(0.5)

    lt.run(down())
    lt.close()


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
    addr: str, samples: np.ndarray, on_event: Any = None, resume: bool = True, auth: Any = AUTH
) -> client.Conversation:
    async with grpc.aio.insecure_channel(addr, options=client.RECONNECT_OPTIONS) as ch:
        return await client.converse(
            ch,
            client.split_chunks(samples, CHUNK),
            metadata=auth,
            clock=SteppingClock(client.now_us()),
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
    uninterrupted = await hold(rstack.gateway_addr, voice)
    resumed_before = counter(rstack.engine.metrics.resumed)
    host, port = rstack.gateway_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    try:

        def cut_mid_way(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 12 and not proxy.cuts:
                proxy.cut()

        cut = await hold(addr, voice, on_event=cut_mid_way)
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
    """A session whose connection was cut and not resumed: its (gateway) token, once the engine parked it."""
    host, port = rstack.gateway_addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    addr = await proxy.start()
    parked_before = rstack.engine.resumes.parked_count()
    try:

        def cut_after_3(ev: pb.ServerEvent) -> None:
            if ev.HasField("audio") and ev.audio.seq == 3 and not proxy.cuts:
                proxy.cut()

        conv = await hold(addr, speechlike(3.0), on_event=cut_after_3, resume=False, auth=auth)
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
    host, port = rstack.gateway_addr.split(":")
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
    code, details, _ = await raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=token))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "resume_token" in details and "grace" in details and "expired" in details


async def test_c_forged_tokens_and_another_keys_resume_are_refused(rstack: ResumeStack) -> None:
    token = await parked_session(rstack)
    replica, engine_token = unwrap(token)
    prefix, handle, secret = engine_token.split(".")
    forged_secret = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    cases = [
        (wrap(replica, f"{prefix}.{handle}.{forged_secret}"), grpc.StatusCode.NOT_FOUND, "no resumable session"),
        (wrap(replica, f"{prefix}.0123456789abcdef.{secret}"), grpc.StatusCode.NOT_FOUND, "no resumable session"),
        (wrap("10.0.0.1:7070", engine_token), grpc.StatusCode.NOT_FOUND, "does not route to"),
        ("g1.!!!.x", grpc.StatusCode.INVALID_ARGUMENT, "resume_token"),
        ("not-a-token", grpc.StatusCode.INVALID_ARGUMENT, "resume_token: malformed"),
        (wrap(replica, "e1.only-two"), grpc.StatusCode.INVALID_ARGUMENT, "resume_token: malformed"),
    ]
    for bad, want, words in cases:
        code, details, _ = await raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=bad))
        assert (code, words in details) == (want, True), (bad, code, details)
    code, details, _ = await raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=token), auth=OTHER_AUTH)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another API key" in details
    # none of these consumed the session: its own key resumes it, and a second resume meanwhile is refused
    attached = asyncio.Event()
    owner = asyncio.create_task(raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=token), hold_open=attached))
    await wait_until(lambda: rstack.on_loop(rstack.engine.resumes.parked_count) == 0, "the owner's resume")
    code, details, _ = await raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=token))
    assert code == grpc.StatusCode.ABORTED and "attached to a live stream" in details
    attached.set()
    code, details, first = await owner
    assert code == grpc.StatusCode.OK, details
    assert first is not None and first.ready.resumed and first.ready.resume_next_seq >= 3


async def test_c_the_step_thread_learns_of_a_park_and_a_resume(rstack: ResumeStack) -> None:
    """The event loop tells the planner through the scheduler's inbox that a session is parked (its cohort's
    steps stop waiting for its chunks: tests/serving/test_planner.py) and that it is resumed (awaited again)."""
    token = await parked_session(rstack)
    handle = unwrap(token)[1].split(".")[1]
    conv = rstack.on_loop(lambda: rstack.engine.resumes.entries[handle].conversation)
    await wait_until(lambda: conv.slot_session.parked, "the planner to learn of the park")
    attached = asyncio.Event()
    owner = asyncio.create_task(raw_start(rstack.gateway_addr, pb.SessionStart(resume_token=token), hold_open=attached))
    await wait_until(lambda: not conv.slot_session.parked, "the planner to learn of the resume")
    attached.set()
    code, details, first = await owner
    assert code == grpc.StatusCode.OK, details
    assert first is not None and first.ready.resumed


def test_d_resume_through_a_restarted_gateway(tmp_path: Path) -> None:
    """Real processes: ``duplex engine`` and ``duplex gateway``; the gateway is killed mid-conversation and a
    new one started on the same port. The client resumes through it (the token names the replica: the new
    gateway needs no state) and every chunk is answered once."""
    cfg = tmp_path / "engine.json"
    cfg.write_text(
        json.dumps(
            {
                "engine": {"host": "127.0.0.1", "metrics_port": 0, "max_sessions": 4, "resume_grace_s": 60},
                "model": {"preset": "tiny", "seed": 3},
            }
        )
    )
    keys = tmp_path / "keys"
    keys.write_text(key_line("k-123", "tester") + "\n")
    port = free_port()

    def gateway(eaddr: str) -> Proc:
        sets = ["gateway.host=127.0.0.1", "gateway.metrics_port=0", f"gateway.api_keys_file={keys}"]
        g = Proc(["gateway", "--engines", eaddr, "--port", str(port), *[a for s in sets for a in ("--set", s)]])
        wait_serving(g.wait_for(r"gateway on (127\.0\.0\.1:\d+)").group(1))
        return g

    engine = Proc(["engine", "--config", str(cfg), "--port", "0"])
    gateways: list[Proc] = []
    try:
        eaddr = engine.wait_for(r"engine serving tiny on (127\.0\.0\.1:\d+)").group(1)
        gateways.append(gateway(eaddr))
        n_chunks = 30

        async def talk() -> client.Conversation:
            loop = asyncio.get_running_loop()
            restarted = asyncio.Event()

            async def restart() -> None:
                gateways[0].p.kill()
                gateways[0].p.wait(timeout=30)
                gateways.append(await asyncio.to_thread(gateway, eaddr))
                restarted.set()

            tasks: list[asyncio.Task[None]] = []

            def on_event(ev: pb.ServerEvent) -> None:
                if ev.HasField("audio") and ev.audio.seq == 8 and not tasks:
                    tasks.append(loop.create_task(restart()))

            async with client.channel(f"127.0.0.1:{port}") as ch:
                conv = await client.converse(
                    ch,
                    client.split_chunks(speechlike(n_chunks * 0.2), CHUNK),
                    metadata=(("x-api-key", "k-123"),),
                    on_event=on_event,
                )
            assert tasks and restarted.is_set()
            return conv

        conv = asyncio.run(talk())
        assert conv.code == grpc.StatusCode.OK, conv.details
        assert len(conv.resumptions) == 1 and conv.resumptions[0].resumed_us > 0, conv.resumptions
        assert conv.audio_seqs() == list(range(n_chunks))
        engine.wait_for("session resumed", 10)
    finally:
        for g in gateways:
            if g.p.poll() is None:
                g.stop(signal.SIGKILL)
        assert engine.stop(signal.SIGTERM) == 0


def test_gateway_token_names_the_replica_and_round_trips() -> None:
    token = wrap("engine-0.duplex:7070", "e1.00ff.secret_-part")
    assert token.startswith("g1.") and "engine-0" not in token  # base64, no dots of its own
    assert unwrap(token) == ("engine-0.duplex:7070", "e1.00ff.secret_-part")
    for bad in ("", "g1", "g1.x", "g2.ZW5naW5l.e1.a.b", "g1..e1.a.b", "g1.@@@.e1.a.b", "g1.ZW5naW5l."):
        with pytest.raises(ValueError, match=r"start\.resume_token"):
            unwrap(bad)
