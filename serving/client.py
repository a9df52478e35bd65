"""A conversation client: streams audio chunks (real-time paced or as fast as possible) and records every
server event with the client's clock. Used by ``duplex talk``, ``bench/serving.py`` and the tests.

Time axis (DESIGN.md "Recorded conversations"): a file-driven client behaves like a microphone. A microphone
hands chunk k over only once its ``chunk_ms`` are captured, so chunk k is sent at capture start +
(k+1)·chunk_ms, and ``Conversation.start_us`` — sample 0 of the user's and the model's tracks — is the
capture start of chunk 0, one chunk before chunk 0 is sent. Latencies measured on the recorded tracks are then
measured from capture times, as a user hears them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from duplex.v1 import duplex_pb2 as pb


def now_us() -> int:
    return time.time_ns() // 1000


class Clock(Protocol):
    """The client's clock: stamps events and paces sending. Tests inject one that steps instead of waiting."""

    def now_us(self) -> int:
        """Microseconds on the client's clock (any epoch; the server echoes it back)."""
        ...

    async def sleep_until(self, t_us: int) -> None:
        """Return once ``now_us() >= t_us`` (at once when it already is)."""
        ...


class SystemClock:
    """Wall-clock epoch, monotonic progress: readings never jump when the system time is adjusted."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def now_us(self) -> int:
        return (time.monotonic_ns() + self._offset_ns) // 1000

    async def sleep_until(self, t_us: int) -> None:
        delay_s = (t_us - self.now_us()) / 1e6
        if delay_s > 0:
            await asyncio.sleep(delay_s)


@dataclass
class Received:
    t_us: int
    """Client wall clock when the event arrived."""
    event: pb.ServerEvent


@dataclass
class Conversation:
    """What one ``converse`` call saw."""

    start_us: int = 0
    """Client clock at the capture start of the first audio chunk (its send time − ``chunk_us``): sample 0 of
    both tracks."""
    chunk_us: int = 0
    """Chunk length: chunk k is fully captured, and sent, at ``start_us + (k + 1) * chunk_us``."""
    sent_us: dict[int, int] = field(default_factory=dict)
    """Client clock when each audio chunk (by seq) was actually sent."""
    received: list[Received] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()

    @property
    def ready(self) -> pb.SessionReady | None:
        for r in self.received:
            if r.event.HasField("ready"):
                return r.event.ready
        return None

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.event.WhichOneof("event") == kind]

    def agent_finished(self, call_ids: Sequence[str]) -> bool:
        """Has every call in ``call_ids`` had its DONE or FAILED ``AgentEvent``?"""
        done = {r.event.agent.job_id for r in self.of("agent") if r.event.agent.state in (pb.DONE, pb.FAILED)}
        return done.issuperset(call_ids)

    def audio_seqs(self) -> list[int]:
        return [r.event.audio.seq for r in self.of("audio")]

    def placements(self, sample_rate: int, model_time: bool = False) -> list[tuple[int, pb.ModelAudio]]:
        """Where each model audio chunk starts on the recorded time axis (sample 0 = ``start_us``).

        As heard (default): when the chunk arrived, or when the previous one finished playing if that is later
        — what a listener heard, network and batching delays included. Model time: at its ``output_sample``,
        the place the model gave it in its own output stream (sample 0 = the model's audio alongside the
        user's sample 0); arrival times do not move it, so runs with the same outputs compare byte for byte."""
        placed = []
        cursor = 0
        for r in self.of("audio"):
            a = r.event.audio
            if model_time:
                at = a.output_sample
            else:
                at = max(cursor, int((r.t_us - self.start_us) * sample_rate / 1e6))
                cursor = at + a.samples
            placed.append((at, a))
        return placed

    def output_track(self, sample_rate: int, total_samples: int, model_time: bool = False) -> np.ndarray:
        """The model's audio as int16 samples placed by ``placements`` (silent chunks stay zero), cut to
        ``total_samples``."""
        out = np.zeros(total_samples, dtype=np.int16)
        for at, a in self.placements(sample_rate, model_time):
            if a.pcm and at < total_samples:
                pcm = np.frombuffer(a.pcm, dtype="<i2")[: total_samples - at]
                out[at : at + len(pcm)] = pcm
        return out


def channel(target: str, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to a gateway or engine: TLS verified against the PEM CA bundle ``ca_file`` when given, else
    plaintext."""
    if ca_file is None:
        return grpc.aio.insecure_channel(target)
    root = Path(ca_file).read_bytes()
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))


def start_event(
    model: str = "",
    chunk_ms: int = 0,
    sample_rate: int = 16000,
    instructions: str = "",
    tools: Sequence[str] = (),
    session_id: str = "",
) -> pb.ClientEvent:
    fmt = pb.AudioFormat(sample_rate=sample_rate, channels=1, encoding=pb.PCM16_LE)
    return pb.ClientEvent(
        start=pb.SessionStart(
            model=model,
            format=fmt,
            chunk_ms=chunk_ms,
            instructions=instructions,
            tools=list(tools),
            session_id=session_id,
        )
    )


def audio_event(seq: int, pcm: bytes, t_us: int | None = None) -> pb.ClientEvent:
    return pb.ClientEvent(audio=pb.AudioChunk(seq=seq, pcm=pcm, client_time_us=now_us() if t_us is None else t_us))


def split_chunks(samples: np.ndarray, chunk_samples: int) -> list[bytes]:
    """int16 mono samples → PCM16 chunks, the last one zero-padded."""
    n = -(-len(samples) // chunk_samples)
    padded = np.zeros(n * chunk_samples, dtype="<i2")
    padded[: len(samples)] = samples
    return [padded[i * chunk_samples : (i + 1) * chunk_samples].tobytes() for i in range(n)]


async def converse(
    channel: grpc.aio.Channel,
    chunks: Sequence[bytes],
    chunk_ms: int = 200,
    realtime: bool = True,
    start: pb.ClientEvent | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    extra: Sequence[tuple[int, pb.ClientEvent]] = (),
    start_delay_s: float = 0.0,
    follow_hint: bool = True,
    stamp_start: bool = True,
    clock: Clock | None = None,
    hold_open: Callable[[Conversation], bool] | None = None,
    max_hold_chunks: int = 0,
) -> Conversation:
    """Hold one conversation: send ``start``, then the chunks, then EndOfStream; ``extra`` events are sent
    right before the chunk with the given index.

    Chunk k is sent once it would have been captured by a microphone: at ``start_us + (k + 1) * chunk_ms``
    when ``realtime``, else as fast as the stream takes it (``start_us`` is then one chunk before chunk 0 is
    sent, all the same). A real-time client follows the server's phase hint
    (``SessionReady.send_at_client_us``): chunk 0 goes out at that time of its clock, so its chunks reach the
    engine just before their batch's step. ``follow_hint=False`` sends at once (a free-running client);
    ``start_delay_s`` delays either further. ``stamp_start`` puts the client's clock into ``start`` (when it
    has none), which asks for the hint. ``clock`` stamps and paces everything (default: ``SystemClock``).
    ``hold_open``: after the last chunk, keep sending silent chunks (as an open microphone would) while it
    returns True, at most ``max_hold_chunks`` of them (``duplex talk --call`` waits for its results so).
    Extra events at an index past the last chunk go out after it."""
    clk = clock if clock is not None else SystemClock()
    chunk_us = chunk_ms * 1000
    conv = Conversation(chunk_us=chunk_us)
    converse_rpc = channel.stream_stream(
        "/duplex.v1.Duplex/Converse",
        request_serializer=pb.ClientEvent.SerializeToString,
        response_deserializer=pb.ServerEvent.FromString,
    )
    extra_at: dict[int, list[pb.ClientEvent]] = {}
    for i, ev in extra:
        extra_at.setdefault(i, []).append(ev)

    ready = asyncio.Event()
    over: list[bool] = []
    first_send_us: list[int] = []
    """Client time to send chunk 0 at (set when ``ready`` arrives)."""

    async def requests() -> object:
        first = pb.ClientEvent()
        first.CopyFrom(start if start is not None else start_event(chunk_ms=chunk_ms))
        if stamp_start and first.HasField("start") and not first.start.client_time_us:
            first.start.client_time_us = clk.now_us()
        yield first
        await ready.wait()  # stream audio only once the session is negotiated
        if over:
            return
        send_0 = (first_send_us[0] if first_send_us else clk.now_us()) + round(start_delay_s * 1e6)
        await clk.sleep_until(send_0)
        conv.start_us = clk.now_us() - chunk_us  # capture start: chunk 0 is complete when it is sent
        for seq, pcm in enumerate(chunks):
            if realtime:
                await clk.sleep_until(conv.start_us + (seq + 1) * chunk_us)
            for ev in extra_at.get(seq, []):
                yield ev
            t = clk.now_us()
            conv.sent_us[seq] = t
            yield audio_event(seq, pcm, t)
        for ev in [ev for i in sorted(extra_at) if i >= len(chunks) for ev in extra_at[i]]:
            yield ev
        silence = bytes(len(chunks[0])) if chunks else b""
        seq, hold_us = len(chunks), clk.now_us()
        while hold_open is not None and silence and seq < len(chunks) + max_hold_chunks and hold_open(conv):
            await clk.sleep_until(hold_us + (seq - len(chunks) + 1) * chunk_us)  # real time even with --fast
            t = clk.now_us()
            conv.sent_us[seq] = t
            yield audio_event(seq, silence, t)
            seq += 1
        yield pb.ClientEvent(end=pb.EndOfStream())

    call = converse_rpc(requests(), metadata=tuple(metadata))
    try:
        async for ev in call:
            t = clk.now_us()
            conv.received.append(Received(t, ev))
            if ev.HasField("ready"):
                at = ev.ready.send_at_client_us
                first_send_us.append(at if realtime and follow_hint and at else t)
                ready.set()
        conv.code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        conv.code, conv.details = e.code(), e.details() or ""
        conv.trailing = tuple((k, str(v)) for k, v in (e.trailing_metadata() or ()))
    finally:
        over.append(True)
        ready.set()  # release the request generator if the call ended before SessionReady
    return conv
