"""The output stage, on the event loop: a typed ``StepResult`` → each session's ``ServerEvent``s.

PCM16 bytes (none for a silent chunk), incremental UTF-8, turn tracking (``turns.py``), per-chunk timing
and the output metrics all happen here, off the step thread and outside any lock: the step thread only
hands the result over (its audio already as int16 samples, converted in one batched tensor op).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from duplex.v1 import duplex_pb2 as pb

from ..metrics import EngineMetrics
from .executor import RowResult, StepResult
from .session import Conversation


class OutputStage:
    """Turns step results into server events and hands them to the sessions' outboxes."""

    def __init__(
        self,
        metrics: EngineMetrics,
        sample_rate: int,
        chunk_samples: int,
        lost_after_chunks: int,
        wall_us: Callable[[float], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``wall_us`` maps a monotonic time to the engine's wall clock (µs since the epoch)."""
        self.metrics = metrics
        self.sample_rate, self.chunk_samples = sample_rate, chunk_samples
        self.lost_after_chunks = lost_after_chunks
        self.wall_us, self.clock = wall_us, clock
        self.on_model_text: Callable[[Conversation, str], None] | None = None
        """Called with each session's text delta after it was delivered (the engine's tool-call parser)."""
        self.on_text_fed: Callable[[Conversation, tuple[int, ...]], None] | None = None
        """Called with the text-input bytes a step fed to a session's model (an observation hook)."""

    def publish(self, result: StepResult) -> None:
        """Deliver one step's outputs (event loop only)."""
        self.metrics.step_seconds.observe(result.compute_ms / 1e3)
        self.metrics.batch_size.observe(result.batch_rows)
        step_start_us = self.wall_us(result.started)
        samples = result.pcm.numpy()
        pcm = [samples[i].tobytes() if loud else b"" for i, loud in enumerate(result.loud)]
        send_us = self.wall_us(self.clock())
        for r, audio in zip(result.rows, pcm, strict=True):
            conv = r.row.conversation
            conv.consumed(0 if r.row.chunk is None or r.row.chunk.tail else 1, len(r.row.text))
            if r.row.text and self.on_text_fed is not None:
                self.on_text_fed(conv, r.row.text)
            if conv.left or conv.closing is not None:
                continue
            events = self.events(conv, r, audio, result, step_start_us, send_us)
            conv.deliver(events)
            if self.on_model_text is not None:
                for ev in events:
                    if ev.HasField("text") and ev.text.text:
                        self.on_model_text(conv, ev.text.text)

    def events(
        self, conv: Conversation, r: RowResult, pcm: bytes, result: StepResult, step_start_us: int, send_us: int
    ) -> list[pb.ServerEvent]:
        """One row's events: a CHUNK_LOST warning if silence stood in, the audio, text delta, turn events."""
        row = r.row
        events: list[pb.ServerEvent] = []
        if row.chunk is None:
            self.metrics.chunks.labels("substituted").inc()
            events.append(
                pb.ServerEvent(
                    warning=pb.Warning(
                        code="CHUNK_LOST",
                        seq=row.seq,
                        message=f"audio chunk {row.seq} did not arrive within {self.lost_after_chunks} steps "
                        "of its cohort; silence was processed in its place",
                    )
                )
            )
            recv_us, client_us, wait_ms = step_start_us, 0, 0.0
        elif row.chunk.tail:  # silence fed after the client's input ended: no client chunk to time
            self.metrics.chunks.labels("tail").inc()
            wait_s = result.started - row.chunk.recv_mono
            recv_us, client_us, wait_ms = self.wall_us(row.chunk.recv_mono), 0, wait_s * 1e3
        else:
            self.metrics.chunks.labels("late" if row.late else "on_time").inc()
            wait_s = result.started - row.chunk.recv_mono
            self.metrics.queue_wait_seconds.observe(wait_s)
            recv_us, client_us, wait_ms = row.chunk.recv_wall_us, row.chunk.client_time_us, wait_s * 1e3
        timing = pb.ChunkTiming(
            seq=row.seq,
            client_time_us=client_us,
            server_recv_us=recv_us,
            step_start_us=step_start_us,
            server_send_us=send_us,
            queue_wait_ms=wait_ms,
            aim_error_ms=row.aim_error_s * 1e3,
            compute_ms=result.compute_ms,
            batch_size=result.batch_rows,
            cohort=result.cohort,
            late=row.late,
            substituted=row.chunk is None,
            video=row.video is not None,
            video_seq=max(row.video_seq, 0),
        )
        start = conv.output_sample
        events.append(
            pb.ServerEvent(
                audio=pb.ModelAudio(
                    seq=row.seq,
                    pcm=pcm,
                    samples=self.chunk_samples,
                    output_sample=start,
                    control=r.control,
                    timing=timing,
                )
            )
        )
        conv.output_sample += self.chunk_samples
        delta, final = conv.text.feed(r.text)
        if delta or final:
            events.append(pb.ServerEvent(text=pb.TextDelta(seq=row.seq, text=delta, final=final)))
        turn_events, latencies = conv.turns.feed(row.seq, r.control, r.voiced, start)
        events.extend(pb.ServerEvent(turn=t) for t in turn_events)
        for lat in latencies:
            self.metrics.turn_latency_seconds.observe(lat / self.sample_rate)
        return events

    def dropped(self, conv: Conversation, seq: int) -> None:
        """A chunk came after silence was processed in its place (or after the session left)."""
        conv.consumed(1)
        conv.deliver(
            [
                pb.ServerEvent(
                    warning=pb.Warning(
                        code="LATE_CHUNK_DROPPED",
                        seq=seq,
                        message=f"audio chunk {seq} arrived after silence was processed in its place",
                    )
                )
            ]
        )

    @staticmethod
    def finish(conv: Conversation) -> None:
        """Everything the session sent was stepped: close its stream with OK once the outbox drains."""
        conv.deliver([], finished=True)
