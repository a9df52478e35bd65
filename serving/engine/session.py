"""One conversation, as two types with one owner each, joined by the scheduler's queues.

``Conversation`` belongs to the event loop: the stream's outbox, the output stage's per-session state (turn
tracker, UTF-8 decoder, output position), backpressure counters and how it ends. ``SlotSession`` belongs to
the step thread (the planner): the chunks waiting for a step, its place in a cohort and the late/lost
bookkeeping. Inputs travel loop → step thread through the scheduler's inbox; results travel back through
``loop.call_soon_threadsafe``. Neither side touches the other's fields.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import torch

from duplex.model.family import TextDecoder
from duplex.v1 import duplex_pb2 as pb

from .lifecycle import Lifecycle, Phase
from .turns import TurnTracker


@dataclass
class InputChunk:
    """One validated audio chunk, on its way to a step."""

    seq: int
    """The client's sequence number."""
    pcm: bytes
    """``chunk_samples`` PCM16 little-endian samples, length checked. The step thread turns every row's bytes
    into floats in one batched op: a torch op on the event loop gives the GIL up to the step thread and waits
    to get it back, for each op of each chunk of a cohort's burst."""
    client_time_us: int
    """Client clock when it was sent (echoed back in ChunkTiming)."""
    recv_mono: float
    """Engine monotonic time when it was received."""
    recv_wall_us: int
    """Engine wall clock (µs since the epoch) when it was received."""
    tail: bool = False
    """Silence the engine queued after the client's input ended, for a model that goes on after its input (no
    client chunk: ``client_time_us`` and ``recv_wall_us`` are 0, ``recv_mono`` is when it was queued)."""


@dataclass
class Closing:
    """Why a conversation is being closed with an error status."""

    code: grpc.StatusCode
    """The gRPC status sent to the client."""
    message: str
    """The status message (names the field or the limit)."""


class Conversation:
    """The event loop's side of a session: what is written to the client and how the stream ends."""

    def __init__(
        self,
        session_id: str,
        chunk_samples: int,
        frame_samples: int,
        max_send_backlog: int,
        replay_events: int = 0,
        *,
        text: TextDecoder,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        """``replay_events``: how many sent events to keep for a resume (0 = not resumable); ``text``: the served
        model's decoder of its text tokens (``ServedModel.text_decoder``); ``lifecycle``: its phase, on the
        engine's clock (default: a new one on the monotonic clock)."""
        self.id = session_id
        self.agent_id = f"{session_id}.{uuid.uuid4().hex[:8]}"
        """The session's name towards the background agent: unique even when clients reuse session ids."""
        self.chunk_samples = chunk_samples
        self.key_id = ""
        """Id of the API key the session was opened with (``x-duplex-key-id``; "" on a direct connection)."""
        self.max_send_backlog = max_send_backlog
        self.slot_session = SlotSession(self)
        """The step thread's side of this session (only handed to the scheduler, never read here)."""
        self.outbox: collections.deque[pb.ServerEvent] = collections.deque()
        self.wake = asyncio.Event()
        """Set when the outbox gained events or the conversation finished/closed."""
        self.room = asyncio.Event()
        """Set when a step consumed one of its chunks (the reader may read again)."""
        self.room.set()
        self.chunks_in_flight = 0
        """Chunks submitted whose step (or drop) has not been reported back yet (backpressure)."""
        self.text_in_flight = 0
        """Typed-text tokens submitted and not yet fed to the model."""
        self.turns = TurnTracker(frame_samples)
        self.text = text
        """The model's text tokens → text deltas."""
        self.output_sample = 0
        """Position of the next ModelAudio in the session's output stream."""
        self.left = False
        """The scheduler was told to free its slot: results still in flight are discarded."""
        self.closing: Closing | None = None
        self.finished = False
        self.on_close: Callable[[], None] | None = None
        """Called once when the session is closed with an error (the engine frees its slot)."""
        # ----- resumption (docs/serving.md "Session resumption"): what survives a dropped stream
        self.ready: pb.SessionReady | None = None
        """The negotiated SessionReady (sent again, marked ``resumed``, to a resuming stream)."""
        self.resume_handle = ""
        """Its entry in the engine's resume register ("" = not resumable)."""
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        """Handshake → attached → parked → closed (``lifecycle.Phase``)."""
        self.input_ended = False
        """The client sent EndOfStream (or half-closed): a drop after it ends the session."""
        self.events_in = 0
        """Client events after SessionStart read and handed on, over all its streams."""
        self.events_out = 0
        """Server events after SessionReady handed to a stream, over all its streams."""
        self.replay: collections.deque[pb.ServerEvent] = collections.deque(maxlen=replay_events)
        """The last events handed to a stream: re-sent on resume if the client had not received them."""
        self.backlog_slack = 0
        """Events a resumed stream found waiting: allowed on top of ``max_send_backlog`` until it drained."""
        self.next_audio_seq = 0
        """Sequence number the next audio chunk must have."""
        self.last_video_seq = -1
        """Sequence number of the last video frame read."""

    @property
    def parked(self) -> bool:
        """No stream is attached: the slot is kept for the resume grace."""
        return self.lifecycle.phase is Phase.PARKED

    def deliver(self, events: list[pb.ServerEvent], finished: bool = False) -> None:
        if self.closing is not None:
            return
        self.outbox.extend(events)
        # a parked session has no reader until it is resumed: its outbox is bounded by the grace instead
        if len(self.outbox) > self.max_send_backlog + self.backlog_slack and not self.parked:
            self.close(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client is not reading: {len(self.outbox)} server events unsent "
                f"(limit {self.max_send_backlog}); closing the session",
            )
        if finished:
            self.finished = True
        self.wake.set()

    def consumed(self, chunks: int, text_tokens: int = 0) -> None:
        """A step (or a drop) took ``chunks`` of its chunks and ``text_tokens`` of its text."""
        self.chunks_in_flight -= chunks
        self.text_in_flight -= text_tokens
        self.room.set()

    def close(self, code: grpc.StatusCode, message: str) -> None:
        if self.closing is None:
            self.closing = Closing(code, message)
            self.outbox.clear()  # nothing more is sent but the status: memory stays bounded
            if self.on_close is not None:
                self.on_close()
        self.room.set()
        self.wake.set()


@dataclass(eq=False)
class SlotSession:
    """The step thread's side of a session: owned by the planner, never touched by the event loop."""

    conversation: Conversation
    """The loop-side half, only carried through plans and results back to the loop."""
    pending: collections.deque[InputChunk] = field(default_factory=collections.deque)
    """Chunks received and not yet stepped, oldest first."""
    cohort: int | None = None
    """Index of its cohort (None = not placed yet)."""
    slot: int = -1
    """Its row in the model and codec state (-1 = not placed)."""
    reserved: int | None = None
    """The cohort promised by the phase hint, until the first chunk places the session."""
    next_seq: int = 0
    """Sequence number of the next chunk a step will consume."""
    owed: int = 0
    """Regular steps of its cohort since it joined minus chunks it consumed: > 0 = behind real time (its
    chunks are late; catch-up steps run for them), < 0 = ahead (the client sent faster than real time)."""
    late_streak: int = 0
    """Consecutive regular steps missed (drives migration to a better-phased cohort)."""
    arrival_phase_s: float = 0.0
    """Phase of its chunks' arrival within the chunk period (where it was placed)."""
    wait_ema_s: float = 0.0
    """Moving average of how long its on-time chunks waited for their step (drives migration)."""
    ended: bool = False
    """The client sent EndOfStream: finish the pending chunks, then close."""
    tail: bool = False
    """Its input ended and the model goes on (``StreamFormat.continues_after_input``): silence is fed."""
    tail_done: bool = False
    """A step said the model's output is over (``FamilyStep.done``): close once nothing is pending."""
    left: bool = False
    """Its slot was freed: chunks still arriving are dropped."""
    parked: bool = False
    """Its stream dropped and the slot is kept for a resume: its cohort's steps do not wait for it (told by
    the event loop through the scheduler's inbox; the loop's own flag is ``Conversation.parked``)."""
    text_queue: collections.deque[int] = field(default_factory=collections.deque)
    """Typed-text byte tokens waiting to be fed with its next stepped chunks."""
    videos: collections.deque[tuple[int, int, torch.Tensor]] = field(default_factory=collections.deque)
    """Video frames waiting for their chunk: (audio seq of the chunk that follows the frame on the stream,
    ``VideoFrame.seq``, frame (3, V, V)); at most one per chunk (a later frame before the same chunk replaces
    it), so no more wait than chunks do."""
    prompt: object | None = None
    """The session's prompt (PersonaPlex: voice and persona), prefilled into its slot once it is placed."""
    prefilling: bool = False
    """Placed, and its prompt's prefill is not done: its chunks wait and its cohort's steps leave its row
    inactive (they do not wait for it either); each regular step of its cohort adds one to ``owed``, so once
    prefilled it catches up with the chunks that came meanwhile like a member after a stall."""
    sampling: object | None = None
    """The session's own sampling settings (the Moshi family), set on its slot when it is placed."""
