"""Wire audio (PCM16 mono at 24 kHz, the Realtime protocol's ``audio/pcm``) ↔ the model's rate, with soxr's
streaming resampler: its filter state carries across chunks, so chunk boundaries leave no seams."""

from __future__ import annotations

import numpy as np
import soxr

WIRE_RATE = 24000
"""The only rate ``audio/pcm`` has in the GA Realtime protocol."""


class StreamResampler:
    """PCM16 bytes at ``in_rate`` → PCM16 bytes at ``out_rate``, one piece at a time (soxr HQ)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "int16", "HQ")

    def feed(self, pcm: bytes) -> bytes:
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        out: np.ndarray = self._stream.resample_chunk(samples)
        return out.astype("<i2").tobytes()


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

    def clear(self) -> int:
        """Drop the partial chunk; how many bytes were dropped."""
        n = len(self._buf)
        self._buf.clear()
        return n
