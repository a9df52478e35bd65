"""Turn-taking evaluated live-mic: corpus conversations streamed in real time through a running server, and
scored by the offline evaluation's scorer on what a listener heard.

Each conversation of a split is one ``Converse`` session held by the shared client
(``duplex.serving.client.converse``): chunk k leaves once a live microphone has captured it (capture start +
(k+1)·chunk, on the server's phase hint, re-aimed as the client does), ``concurrency`` conversations at a time.
The model's audio is placed on the capture axis where a listener without a jitter buffer hears it — a chunk
starts when it arrives, or when the previous one has finished playing (``Conversation.output_track``, the rule
of ``loadtest/listener.py``) — and cut to the user track's length. Those heard tracks are scored by
``duplex.model.evaluate.score``, the function that scores the offline path's tracks (placed exactly one chunk
late there), so live and offline figures are one metric on two placements of the model's audio: the live
latency holds the capture of a chunk, the network, the batching, the step and the client's own delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from duplex.model.data import Conversation
from duplex.model.evaluate import Metrics, score
from duplex.model.timespeak import Piece, TimeSpeakMetrics, Utterance, utterances
from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .local import LocalUp

SAMPLE_RATE = 16_000
DEFAULT_CONCURRENCY = 8


class LiveEvalError(RuntimeError):
    """A conversation did not go through (its status), or the server answered fewer chunks than were sent."""


@dataclass(frozen=True)
class Delivery:
    """How the run's audio travelled: what the live figures hold besides the model's decisions."""

    conversations: int
    chunks: int
    """Model audio chunks received (one per chunk sent)."""
    substituted: int
    """Chunks the engine stepped without the user's audio (it came too late): the model heard silence there."""
    send_lag_max_s: float
    """Largest delay of a chunk's send behind its capture end (the client falling behind)."""
    heard_delay_p50_s: float
    """Median of where a chunk's audio is heard minus the end of its input chunk's capture: the delay the live
    path adds to the offline placement (which is exactly one chunk)."""
    heard_delay_p95_s: float


@dataclass
class LiveRun:
    """What streaming a split live gave: per conversation the client's record and the heard model track."""

    records: list[client.Conversation]
    tracks: list[npt.NDArray[np.float32]]
    """The model's audio as heard (float32, the user track's length and time axis)."""
    chunk_ms: int
    delivery: Delivery


def pcm16(track: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """A corpus track as the PCM16 it was read from (``read_track`` divides by 32768)."""
    return np.round(track * 32768.0).astype(np.int16)


def heard_track(record: client.Conversation, samples: int) -> npt.NDArray[np.float32]:
    """The model's audio placed where the listener heard it, ``samples`` long, as float32 in [-1, 1)."""
    return record.output_track(SAMPLE_RATE, samples).astype(np.float32) / np.float32(32768.0)


def heard_delays_s(record: client.Conversation) -> list[float]:
    """Per model chunk: where it is heard minus the capture end of its input chunk (axis seconds)."""
    chunk = record.chunk_us * SAMPLE_RATE // 1_000_000
    return [(at - (a.seq + 1) * chunk) / SAMPLE_RATE for at, a in record.placements(SAMPLE_RATE)]


def delivery(records: Sequence[client.Conversation]) -> Delivery:
    audio = [r.event.audio for rec in records for r in rec.of("audio")]
    lags = [t - rec.capture_end_us(seq) for rec in records for seq, t in rec.sent_us.items()]
    delays = sorted(d for rec in records for d in heard_delays_s(rec))
    return Delivery(
        conversations=len(records),
        chunks=len(audio),
        substituted=sum(a.timing.substituted for a in audio),
        send_lag_max_s=max(0, max(lags, default=0)) / 1e6,
        heard_delay_p50_s=float(np.percentile(delays, 50)) if delays else 0.0,
        heard_delay_p95_s=float(np.percentile(delays, 95)) if delays else 0.0,
    )


def typed_text(conv: Conversation, chunk_samples: int) -> list[tuple[int, pb.ClientEvent]]:
    """The conversation's ``typed_text`` events as ``TextInput`` sent right before the chunk they start in, so
    the engine feeds them from that chunk's first frame (where the corpus placed them)."""
    return [
        (int(e["start_sample"]) // chunk_samples, pb.ClientEvent(text=pb.TextInput(text=e["text"])))
        for e in conv.events
        if e["type"] == "typed_text"
    ]


def said_live(record: client.Conversation) -> list[Utterance]:
    """The model's text deltas as utterances, each placed where the audio chunk of its ``seq`` was heard."""
    heard = {a.seq: at / SAMPLE_RATE for at, a in record.placements(SAMPLE_RATE)}
    pieces: list[Piece] = [
        (heard.get(r.event.text.seq, record.axis_us(r.t_us) / 1e6), r.event.text.text.encode(), r.event.text.final)
        for r in record.of("text")
    ]
    return utterances(sorted(pieces, key=lambda p: p[0]))


def score_timespeak_live(system: str, convs: Sequence[Conversation], run: LiveRun) -> TimeSpeakMetrics:
    """The TimeSpeak scorer on what a listener got: the text deltas and the heard audio."""
    from duplex.model.timespeak_eval import score_timespeak

    return score_timespeak(system, convs, [said_live(r) for r in run.records], run.tracks)


def check_record(conv: Conversation, record: client.Conversation, chunk_ms: int) -> None:
    """Raise LiveEvalError unless the conversation ended OK with one model chunk per chunk sent."""
    if record.code != grpc.StatusCode.OK:
        raise LiveEvalError(f"conversation {conv.id}: {record.code.name}: {record.details}")
    ready = record.ready
    if ready is not None and ready.chunk_ms != chunk_ms:
        raise LiveEvalError(f"the server's chunk is {ready.chunk_ms} ms, the evaluation's {chunk_ms} ms (--chunk-ms)")
    got, sent = len(record.of("audio")), len(record.sent_us)
    if got != sent:
        raise LiveEvalError(f"conversation {conv.id}: the server answered {got} of {sent} chunks")


async def hold_all(
    address: str, convs: Sequence[Conversation], chunk_ms: int, concurrency: int, metadata: Sequence[tuple[str, str]]
) -> list[client.Conversation]:
    """Hold every conversation live, ``concurrency`` at a time; the records in ``convs`` order."""
    gate = asyncio.Semaphore(concurrency)
    chunk_samples = SAMPLE_RATE * chunk_ms // 1000

    async with client.channel(address) as ch:

        async def one(conv: Conversation) -> client.Conversation:
            async with gate:
                return await client.converse(
                    ch,
                    client.split_chunks(pcm16(conv.user.numpy()), chunk_samples),
                    chunk_ms=chunk_ms,
                    start=client.start_event(chunk_ms=chunk_ms, no_resume=True),
                    metadata=metadata,
                    extra=typed_text(conv, chunk_samples),
                    resume=False,
                )

        return list(await asyncio.gather(*(one(c) for c in convs)))


def stream_live(
    address: str,
    convs: Sequence[Conversation],
    chunk_ms: int = 200,
    concurrency: int = DEFAULT_CONCURRENCY,
    metadata: Sequence[tuple[str, str]] = (),
) -> LiveRun:
    """Stream ``convs`` through the server at ``address`` at live-microphone pace; the heard model tracks."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not convs:
        raise ValueError("no conversations to stream")
    records = asyncio.run(hold_all(address, convs, chunk_ms, concurrency, metadata))
    for conv, rec in zip(convs, records, strict=True):
        check_record(conv, rec, chunk_ms)
    tracks = [heard_track(rec, int(conv.user.shape[0])) for conv, rec in zip(convs, records, strict=True)]
    return LiveRun(records, tracks, chunk_ms, delivery(records))


def score_live(system: str, convs: Sequence[Conversation], run: LiveRun) -> Metrics:
    """The offline scorer on the heard tracks."""
    return score(system, list(convs), run.tracks, run.chunk_ms)


def up_args(checkpoint: Path | None, chunk_ms: int, concurrency: int) -> list[str]:
    """``duplex up`` flags for an evaluation server: no agent (no tool calls are made), a slot for every
    conversation held at once."""
    args = ["--no-agent", "--chunk-ms", str(chunk_ms)]
    args += ["--max-sessions", str(concurrency)] if concurrency > 64 else []
    return args + (["--checkpoint", str(checkpoint)] if checkpoint is not None else [])


def evaluate_live(
    system: str,
    convs: Sequence[Conversation],
    address: str | None = None,
    checkpoint: Path | None = None,
    chunk_ms: int = 200,
    concurrency: int = DEFAULT_CONCURRENCY,
    metadata: Sequence[tuple[str, str]] = (),
) -> tuple[Metrics, LiveRun]:
    """Score ``convs`` live through the server at ``address`` (``metadata``: e.g. its API key), or through a
    ``duplex up`` serving ``checkpoint`` started here (and stopped after) when no address is given."""
    run = run_live(convs, address, checkpoint, chunk_ms, concurrency, metadata)
    return score_live(system, convs, run), run


def run_live(
    convs: Sequence[Conversation],
    address: str | None = None,
    checkpoint: Path | None = None,
    chunk_ms: int = 200,
    concurrency: int = DEFAULT_CONCURRENCY,
    metadata: Sequence[tuple[str, str]] = (),
) -> LiveRun:
    """``stream_live`` through the server at ``address``, or through a ``duplex up`` started here."""
    if address is not None:
        return stream_live(address, convs, chunk_ms, concurrency, metadata)
    with LocalUp(args=up_args(checkpoint, chunk_ms, concurrency)) as up:
        return stream_live(up.address, convs, chunk_ms, concurrency)


def describe(d: Delivery) -> str:
    """One line on how the run's audio travelled."""
    return (
        f"{d.conversations} conversations, {d.chunks} chunks ({d.substituted} stepped without their audio); "
        f"heard delay beyond the capture of a chunk p50 {d.heard_delay_p50_s:.3f} s, p95 {d.heard_delay_p95_s:.3f} s; "
        f"largest send lag {d.send_lag_max_s:.3f} s"
    )
