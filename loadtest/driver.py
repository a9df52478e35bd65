"""One real-time conversation over the sync gRPC stub, paced like a live microphone.

Runs under gevent in Locust (grpc's gevent support makes the request iterator a greenlet) and works the same
in plain threads. Pacing and measurement are this module's own (``listener.SendSchedule``/``Listener``);
from the shared client it reuses the pure message helpers (``split_chunks``, ``start_event``,
``first_send_us``, ``audio_event``) and the phase aim (``PhaseAim``, ``CaptureAxis``). Chunk k leaves at
capture start + (k+1)·chunk_ms (plus the re-aims); the lag of each send behind that due time is reported, so a
run whose clients fell behind can be refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from duplex.serving.client import PhaseAim, audio_event, first_send_us, split_chunks, start_event
from duplex.v1 import duplex_pb2 as pb

from .corpus import SAMPLE_RATE, ScriptedConversation
from .listener import Listener, Measurement, SendSchedule

CONVERSE = "/duplex.v1.Duplex/Converse"


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


@dataclass
class Outcome:
    """How one conversation ended."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    chunks_sent: int = 0
    warnings: int = 0
    lag_max_s: float = 0.0
    """Largest delay of a chunk's send behind its due time (capture start + (k+1)·chunk)."""


def converse_rpc(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(
        CONVERSE, request_serializer=pb.ClientEvent.SerializeToString, response_deserializer=pb.ServerEvent.FromString
    )


def hold_conversation(
    rpc: grpc.StreamStreamMultiCallable,
    conv: ScriptedConversation,
    chunk_ms: int,
    metadata: Sequence[tuple[str, str]],
    on_measure: Callable[[Measurement], None],
    on_lag: Callable[[float], None] = lambda _: None,
    clock_us: Callable[[], int] = monotonic_us,
) -> Outcome:
    """Stream ``conv``'s user track at live-microphone pace and report every measurement as it completes.

    The schedule follows the server's phase hint (``SessionReady.send_in_us`` placed on this client's clock
    by ``first_send_us``; the start carries ``clock_us()`` to ask for it), re-aimed from the chunks' aim
    errors as the shared client does (``PhaseAim``). Latencies are measured on the capture axis of the
    schedule."""
    chunks = split_chunks(conv.user, SAMPLE_RATE * chunk_ms // 1000)
    outcome = Outcome()
    ready = threading.Event()
    over = threading.Event()
    schedule: list[SendSchedule] = []
    # a Locust user stopped mid-conversation will not come back: its slot must be free for the next step
    first = start_event(chunk_ms=chunk_ms, no_resume=True)

    def requests() -> Iterator[pb.ClientEvent]:
        first.start.client_time_us = clock_us()
        yield first
        ready.wait()
        if over.is_set() or not schedule:
            return
        sched = schedule[0]
        for k, pcm in enumerate(chunks):
            delay_us = sched.capture_end_us(k) - clock_us()
            if delay_us > 0 and over.wait(delay_us / 1e6):
                return  # the call ended (error or cancel) while waiting for the microphone
            t = clock_us()
            lag = max(0.0, (t - sched.capture_end_us(k)) / 1e6)
            outcome.lag_max_s = max(outcome.lag_max_s, lag)
            on_lag(lag)
            outcome.chunks_sent = k + 1
            yield audio_event(k, pcm, t)
        yield pb.ClientEvent(end=pb.EndOfStream())

    call = rpc(requests(), metadata=tuple(metadata))
    listener: Listener | None = None
    sched: SendSchedule | None = None
    aim: PhaseAim | None = None
    try:
        for ev in call:
            kind = ev.WhichOneof("event")
            if kind == "audio" and listener is not None and sched is not None and aim is not None:
                for m in listener.feed(sched.axis_s(clock_us()), list(ev.audio.control)):
                    on_measure(m)
                aim.observe(ev.audio, outcome.chunks_sent)
            elif kind == "ready":
                chunk = ev.ready.chunk_ms or chunk_ms
                if chunk != chunk_ms:
                    raise ValueError(f"chunk_ms: the server's chunk is {chunk} ms, the load test's {chunk_ms} ms")
                now = clock_us()
                sched = SendSchedule.from_hint(first_send_us(ev.ready, first.start.client_time_us, now), now, chunk_ms)
                listener = Listener(conv.script, chunk_ms / 1000)
                aim = PhaseAim(sched)
                schedule.append(sched)
                ready.set()
            elif kind == "warning":
                outcome.warnings += 1
        if listener is not None and sched is not None:
            for m in listener.flush(sched.axis_s(clock_us())):
                on_measure(m)
    except grpc.RpcError as e:
        outcome.code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        outcome.details = (e.details() if isinstance(e, grpc.Call) else str(e)) or ""
    finally:
        over.set()
        ready.set()
        call.cancel()  # a no-op after a clean end; stops the stream when the user is killed mid-conversation
    return outcome
