"""One utterance through the engine's scheduler: the same planner → executor → output stage that serves
``Converse``, so concurrent V2 requests share steps with each other (and with conversations).

An utterance is a session whose chunks are all available at once: its samples cut into the engine's chunks
(the last padded with silence), then ``trailing_silence_ms`` of silent chunks while the model answers. A
member of a cohort holding two or more chunks triggers the planner's catch-up steps, so the session is
stepped as fast as the step thread allows, not at real-time pace; ``max_pending_chunks`` bounds what waits
in the engine (the rest is submitted as steps consume it). The output stage's ``ServerEvent``s are collected
into one ``Answer``.
"""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
from kserve.errors import InferenceError, ServerNotReady

from duplex.v1 import duplex_pb2 as pb

from ..engine.scheduler import Scheduler
from ..engine.session import Conversation, InputChunk
from ..spec import EngineSpec
from .tensors import Answer, TurnRecord, Utterance


class _Collector:
    """Folds a session's server events into an ``Answer``."""

    def __init__(self, total_samples: int, sample_rate: int) -> None:
        self.audio = np.zeros(total_samples, np.int16)
        self.sample_rate = sample_rate
        self.text: list[str] = []
        self.turns: list[TurnRecord] = []
        self.chunks = 0
        self.max_batch_size = 0

    def take(self, ev: pb.ServerEvent) -> None:
        if ev.HasField("audio"):
            a = ev.audio
            self.chunks += 1
            self.max_batch_size = max(self.max_batch_size, a.timing.batch_size)
            if a.pcm:  # empty = a silent chunk: the zeros are already there
                pcm = np.frombuffer(a.pcm, dtype="<i2")
                self.audio[a.output_sample : a.output_sample + pcm.size] = pcm
        elif ev.HasField("text"):
            self.text.append(ev.text.text)
        elif ev.HasField("turn"):
            t = ev.turn
            self.turns.append(
                TurnRecord(
                    type=pb.TurnEventType.Name(t.type),
                    time_s=t.output_sample / self.sample_rate,
                    output_sample=t.output_sample,
                    seq=t.seq,
                    truncated_at_sample=t.truncated_at_sample,
                )
            )

    def answer(self) -> Answer:
        return Answer(self.audio, "".join(self.text), self.turns, self.chunks, self.max_batch_size)


def chunks_of(utterance: Utterance, chunk_samples: int, sample_rate: int) -> list[bytes]:
    """The utterance as the engine's input chunks (PCM16 bytes, as a client sends them): padded, then the
    trailing silence."""
    n = math.ceil(utterance.samples.size / chunk_samples)
    silent = math.ceil(utterance.trailing_silence_ms * sample_rate / 1000 / chunk_samples)
    pcm = np.zeros((n + silent) * chunk_samples, "<i2")
    pcm[: utterance.samples.size] = utterance.samples
    return [pcm[i : i + chunk_samples].tobytes() for i in range(0, pcm.size, chunk_samples)]


async def answer(sched: Scheduler, spec: EngineSpec, utterance: Utterance, sample_rate: int) -> Answer:
    """Feed ``utterance`` to the engine as one session and collect what the model answered."""
    chunks = chunks_of(utterance, sched.chunk_samples, sample_rate)
    conv = Conversation(
        uuid.uuid4().hex[:12],
        sched.chunk_samples,
        sched.frame_samples,
        spec.max_send_backlog,
        text=sched.served.text_decoder(),
    )
    if not sched.admit(conv):
        raise ServerNotReady(f"replica full: {sched.capacity}/{sched.capacity} sessions; retry later")
    collector = _Collector(len(chunks) * sched.chunk_samples, sample_rate)
    try:
        if utterance.instructions:
            sched.add_text(conv, list(utterance.instructions.encode()))
        seq, ended = 0, False
        while True:
            while conv.outbox:
                collector.take(conv.outbox.popleft())
            if conv.closing is not None:
                raise InferenceError(f"engine closed the session: {conv.closing.message}")
            if conv.finished:
                return collector.answer()
            while seq < len(chunks) and conv.chunks_in_flight < spec.max_pending_chunks:
                now = time.monotonic()
                sched.submit(conv, InputChunk(seq, chunks[seq], 0, now, sched.wall_us(now)))
                seq += 1
            if seq == len(chunks) and not ended:
                sched.end(conv)  # the engine finishes the queued chunks, then marks the session finished
                ended = True
            # every step result and the finish are delivered on this loop and set `wake`: nothing can slip
            # in between the checks above and this wait
            conv.wake.clear()
            await conv.wake.wait()
    finally:
        sched.leave(conv)
