"""A conversation client: streams audio chunks (real-time paced or as fast as possible) and records every
server event with the client's clock. Used by ``duplex talk``, ``bench/serving.py`` and the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from duplex.v1 import duplex_pb2 as pb


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Received:
    t_us: int
    """Client wall clock when the event arrived."""
    event: pb.ServerEvent


@dataclass
class Conversation:
    """What one ``converse`` call saw."""

    start_us: int = 0
    """Client clock when the first audio chunk was sent: sample 0 of both tracks."""
    sent_us: dict[int, int] = field(default_factory=dict)
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

    def audio_seqs(self) -> list[int]:
        return [r.event.audio.seq for r in self.of("audio")]

    def output_track(self, sample_rate: int, total_samples: int) -> np.ndarray:
        """The model's audio as the client would have played it: each chunk starts when it arrived, or when
        the previous one finished playing, on the time axis whose sample 0 is ``start_us``."""
        out = np.zeros(total_samples, dtype=np.int16)
        cursor = 0
        for r in self.of("audio"):
            a = r.event.audio
            at = max(cursor, int((r.t_us - self.start_us) * sample_rate / 1e6))
            if a.pcm:
                pcm = np.frombuffer(a.pcm, dtype="<i2")
                end = min(total_samples, at + len(pcm))
                if end > at:
                    out[at:end] = pcm[: end - at]
            cursor = at + a.samples
        return out


def channel(target: str, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to a gateway or engine: TLS verified against the PEM CA bundle ``ca_file`` when given, else
    plaintext."""
    if ca_file is None:
        return grpc.aio.insecure_channel(target)
    root = Path(ca_file).read_bytes()
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))


def start_event(model: str = "", chunk_ms: int = 0, sample_rate: int = 16000, instructions: str = "",
                tools: Sequence[str] = (), session_id: str = "") -> pb.ClientEvent:
    fmt = pb.AudioFormat(sample_rate=sample_rate, channels=1, encoding=pb.PCM16_LE)
    return pb.ClientEvent(start=pb.SessionStart(model=model, format=fmt, chunk_ms=chunk_ms,
                                                instructions=instructions, tools=list(tools),
                                                session_id=session_id))


def audio_event(seq: int, pcm: bytes, t_us: int | None = None) -> pb.ClientEvent:
    return pb.ClientEvent(audio=pb.AudioChunk(seq=seq, pcm=pcm, client_time_us=now_us() if t_us is None else t_us))


def split_chunks(samples: np.ndarray, chunk_samples: int) -> list[bytes]:
    """int16 mono samples → PCM16 chunks, the last one zero-padded."""
    n = -(-len(samples) // chunk_samples)
    padded = np.zeros(n * chunk_samples, dtype="<i2")
    padded[: len(samples)] = samples
    return [padded[i * chunk_samples : (i + 1) * chunk_samples].tobytes() for i in range(n)]


async def converse(channel: grpc.aio.Channel, chunks: Sequence[bytes], chunk_ms: int = 200, realtime: bool = True,
                   start: pb.ClientEvent | None = None, metadata: Sequence[tuple[str, str]] = (),
                   extra: Sequence[tuple[int, pb.ClientEvent]] = (), start_delay_s: float = 0.0,
                   follow_hint: bool = True, stamp_start: bool = True) -> Conversation:
    """Hold one conversation: send ``start``, then the chunks (paced at ``chunk_ms`` if ``realtime``), then
    EndOfStream; ``extra`` events are sent right before the chunk with the given index.

    A real-time client follows the server's phase hint (``SessionReady.send_at_client_us``): it starts
    sending at that time of its clock, so its chunks reach the engine just before their batch's step.
    ``follow_hint=False`` sends at once (a free-running client); ``start_delay_s`` delays either further.
    ``stamp_start`` puts the client's clock into ``start`` (when it has none), which asks for the hint."""
    conv = Conversation()
    converse_rpc = channel.stream_stream("/duplex.v1.Duplex/Converse",
                                         request_serializer=pb.ClientEvent.SerializeToString,
                                         response_deserializer=pb.ServerEvent.FromString)
    extra_at: dict[int, list[pb.ClientEvent]] = {}
    for i, ev in extra:
        extra_at.setdefault(i, []).append(ev)

    ready = asyncio.Event()
    over: list[bool] = []
    send_from: list[float] = []
    """Monotonic time to send the first chunk at (set when ``ready`` arrives)."""

    async def requests() -> object:
        first = pb.ClientEvent()
        first.CopyFrom(start if start is not None else start_event(chunk_ms=chunk_ms))
        if stamp_start and first.HasField("start") and not first.start.client_time_us:
            first.start.client_time_us = now_us()
        yield first
        await ready.wait()  # stream audio only once the session is negotiated
        if over:
            return
        delay = send_from[0] - time.monotonic() if send_from else 0.0
        if delay + start_delay_s > 0:
            await asyncio.sleep(delay + start_delay_s)
        t0 = time.monotonic()
        conv.start_us = now_us()
        for seq, pcm in enumerate(chunks):
            if realtime:
                delay = t0 + seq * chunk_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for ev in extra_at.get(seq, []):
                yield ev
            t = now_us()
            conv.sent_us[seq] = t
            yield audio_event(seq, pcm, t)
        yield pb.ClientEvent(end=pb.EndOfStream())

    call = converse_rpc(requests(), metadata=tuple(metadata))
    try:
        async for ev in call:
            conv.received.append(Received(now_us(), ev))
            if ev.HasField("ready"):
                at = ev.ready.send_at_client_us
                hint = (at - now_us()) / 1e6 if realtime and follow_hint and at else 0.0
                send_from.append(time.monotonic() + hint)
                ready.set()
        conv.code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        conv.code, conv.details = e.code(), e.details() or ""
        conv.trailing = tuple((k, str(v)) for k, v in (e.trailing_metadata() or ()))
    finally:
        over.append(True)
        ready.set()  # release the request generator if the call ended before SessionReady
    return conv
