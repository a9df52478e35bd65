"""Wire audio (PCM16 mono at 24 kHz, the Realtime protocol's ``audio/pcm``) ↔ the model's rate, with soxr's
streaming resampler: its filter state carries across pieces, so piece and chunk boundaries leave no seams.

Latency. A streaming resampler holds back the newest input until its filter and block buffer have enough
(soxr's ``LQ`` at most 20 ms here, ``HQ`` about 37 ms; measured for 24↔16 kHz with pieces of 128 samples to
9600 and random sizes). Without care, the last few ms of a chunk would come out only with the next piece, and a
client sending whole 200 ms pieces would see its chunks sent a full piece late. So each stream starts with
``PRIME_MS`` of silence in its output: after that, the output always holds at least as many samples as the
input covered, and chunk k is complete the moment the piece that ends it arrives. The cost is a constant
shift of ``PRIME_MS`` in each direction (docs/realtime.md)."""

from __future__ import annotations

import numpy as np
import soxr

WIRE_RATE = 24000
"""The only rate ``audio/pcm`` has in the GA Realtime protocol."""
QUALITY = "LQ"
"""soxr's recipe: band-limited, 16-bit precision (the data is PCM16), the smallest block lag of its recipes."""
PRIME_MS = 20
"""Silence each stream's output starts with: soxr ``LQ``'s largest lag between input and output."""


class StreamResampler:
    """PCM16 bytes at ``in_rate`` → PCM16 bytes at ``out_rate``, one piece at a time, the output primed with
    ``PRIME_MS`` of silence (none when the rates are equal)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "int16", QUALITY)
        self._prime = b"" if self._stream is None else bytes(2 * (PRIME_MS * out_rate // 1000))
        self._ended = False

    def feed(self, pcm: bytes) -> bytes:
        assert not self._ended, "audio after the stream's end"
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        out: np.ndarray = self._stream.resample_chunk(samples)
        prime, self._prime = self._prime, b""
        return prime + out.astype("<i2").tobytes()

    def flush(self) -> bytes:
        """The end of the stream: the samples the filter still holds back (nothing more after the first call)."""
        if self._stream is None or self._ended:
            return b""
        self._ended = True
        out: np.ndarray = self._stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        prime, self._prime = self._prime, b""
        return prime + out.astype("<i2").tobytes()


class ChunkCutter:
    """Collects model-rate PCM and hands out whole chunks of ``chunk_bytes``."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self._buf = bytearray()

    def feed(self, pcm: bytes) -> list[bytes]:
        self._buf += pcm
        n = len(self._buf) // self.chunk_bytes
        chunks = [bytes(self._buf[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]) for i in range(n)]
        del self._buf[: n * self.chunk_bytes]
        return chunks

    def pad(self) -> list[bytes]:
        """The partial chunk completed with silence (none when nothing is held)."""
        if not self._buf:
            return []
        return self.feed(bytes(self.chunk_bytes - len(self._buf)))

    def clear(self) -> int:
        """Drop the partial chunk; how many bytes were dropped."""
        n = len(self._buf)
        self._buf.clear()
        return n
