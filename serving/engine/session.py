"""One conversation as the engine sees it: its inputs waiting for a step, its place in a cohort, its
outputs waiting to be written, and how it ends."""

from __future__ import annotations

import asyncio
import codecs
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import torch

from duplex.v1 import duplex_pb2 as pb

from .turns import TurnTracker


@dataclass
class InputChunk:
    """One validated audio chunk (plus any text/video that arrived before it), waiting for a step."""

    seq: int
    audio: torch.Tensor
    """(chunk_samples,) float32 in [-1, 1]."""
    client_time_us: int
    recv_mono: float
    recv_wall_us: int
    text: list[int] = field(default_factory=list)
    """Byte tokens of typed text to feed with this chunk."""
    video: torch.Tensor | None = None
    """(3, V, V) float in [0, 1]."""


@dataclass
class Closing:
    code: grpc.StatusCode
    message: str


class Session:
    """Shared between the asyncio side (reader/writer of the stream) and the step thread (scheduler).

    The scheduler's lock guards ``pending``, ``cohort``/``slot`` and the counters; ``outbox`` and ``wake``
    belong to the event loop (the step thread hands results over with ``call_soon_threadsafe``).
    """

    def __init__(self, session_id: str, chunk_samples: int, frame_samples: int, max_send_backlog: int) -> None:
        self.id = session_id
        self.chunk_samples = chunk_samples
        self.max_send_backlog = max_send_backlog
        # --- step-thread side (under the scheduler lock)
        self.pending: collections.deque[InputChunk] = collections.deque()
        self.cohort: int | None = None
        self.slot: int = -1
        self.reserved: int | None = None
        """The cohort promised by the phase hint, until the first chunk places the session."""
        self.next_seq = 0
        """Sequence number of the next chunk a step will consume."""
        self.owed = 0
        """Regular steps of its cohort since it joined minus chunks it consumed: > 0 = behind real time (its
        chunks are late; catch-up steps run for them), < 0 = ahead (the client sent faster than real time)."""
        self.late_streak = 0
        """Consecutive regular steps missed (drives migration to a better-phased cohort)."""
        self.arrival_phase_s = 0.0
        self.wait_ema_s = 0.0
        """Moving average of how long its on-time chunks waited for their step (drives migration)."""
        self.ended = False
        """The client sent EndOfStream: finish the pending chunks, then close."""
        self.left = False
        self.text_queue: collections.deque[int] = collections.deque()
        self.video: torch.Tensor | None = None
        self.turns = TurnTracker(frame_samples)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.output_sample = 0
        # --- event-loop side
        self.outbox: collections.deque[pb.ServerEvent] = collections.deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closing: Closing | None = None
        self.finished = False
        self.on_close: Callable[[], None] | None = None
        """Called once when the session is closed with an error (the engine frees its slot)."""

    # ----- event loop only ---------------------------------------------------------------------------
    def deliver(self, events: list[pb.ServerEvent], finished: bool) -> None:
        if self.closing is not None:
            return
        self.outbox.extend(events)
        if len(self.outbox) > self.max_send_backlog:
            self.close(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"client is not reading: {len(self.outbox)} server events unsent "
                       f"(limit {self.max_send_backlog}); closing the session")
        if finished:
            self.finished = True
        self.room.set()
        self.wake.set()

    def close(self, code: grpc.StatusCode, message: str) -> None:
        if self.closing is None:
            self.closing = Closing(code, message)
            self.outbox.clear()  # nothing more is sent but the status: memory stays bounded
            if self.on_close is not None:
                self.on_close()
        self.room.set()
        self.wake.set()
