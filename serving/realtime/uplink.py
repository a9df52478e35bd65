"""The client's audio on its way to the engine: held until the engine's ``SessionReady`` names the model's rate
and chunk size, then resampled from 24 kHz and cut into chunks, each an ``AudioChunk`` with the next ``seq``.
Pure: no socket; ``clock_us`` stamps ``client_time_us``."""

from __future__ import annotations

from collections.abc import Callable

from duplex.v1 import duplex_pb2 as pb

from .audio import WIRE_RATE, ChunkCutter, StreamResampler
from .protocol import ClientError

MAX_EARLY_AUDIO_S = 10
"""Audio a client may send before the engine has answered ``SessionReady`` (normally milliseconds)."""


class Uplink:
    """Wire audio → the conversation's ``AudioChunk`` events."""

    def __init__(self, clock_us: Callable[[], int]) -> None:
        self.clock_us = clock_us
        self._early = bytearray()
        self._in: StreamResampler | None = None
        self._cutter: ChunkCutter | None = None
        self._seq = 0

    def live(self, ready: pb.SessionReady) -> list[pb.ClientEvent]:
        """The engine answered: from now on audio is cut into its chunks; the chunks the audio sent meanwhile
        completes."""
        self._in = StreamResampler(WIRE_RATE, ready.input_format.sample_rate or 16000)
        self._cutter = ChunkCutter(2 * ready.chunk_samples)
        early, self._early = bytes(self._early), bytearray()
        return self.feed(early)

    def feed(self, pcm: bytes) -> list[pb.ClientEvent]:
        """The chunks ``pcm`` (PCM16 at 24 kHz) completes; before ``live`` it is held (``ClientError`` past
        ``MAX_EARLY_AUDIO_S``)."""
        if self._in is None or self._cutter is None:
            if len(self._early) + len(pcm) > MAX_EARLY_AUDIO_S * WIRE_RATE * 2:
                raise ClientError(
                    f"audio: more than {MAX_EARLY_AUDIO_S} s sent before the session was ready", "audio", "too_early"
                )
            self._early += pcm
            return []
        return self._events(self._cutter.feed(self._in.feed(pcm)))

    def _events(self, chunks: list[bytes]) -> list[pb.ClientEvent]:
        out = []
        for chunk in chunks:
            out.append(pb.ClientEvent(audio=pb.AudioChunk(seq=self._seq, pcm=chunk, client_time_us=self.clock_us())))
            self._seq += 1
        return out

    @property
    def is_live(self) -> bool:
        """``live`` was called: audio is cut into the model's chunks."""
        return self._cutter is not None

    @property
    def chunks_sent(self) -> int:
        """Chunks handed out so far."""
        return self._seq

    def finish(self) -> list[pb.ClientEvent]:
        """The end of the input (``input_audio_buffer.commit`` to a model with a tail): the audio the resampler
        still holds and the partial chunk, completed with silence, as the last chunks. Only once live."""
        assert self._in is not None and self._cutter is not None, "finish before SessionReady"
        return self._events([*self._cutter.feed(self._in.flush()), *self._cutter.pad()])

    def clear(self) -> None:
        """Drop the audio not yet in a chunk (``input_audio_buffer.clear``)."""
        self._early.clear()
        if self._cutter is not None:
            self._cutter.clear()
