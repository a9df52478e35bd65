"""The wire-rate resampling: seamless across pieces, primed so that a chunk is complete the moment the piece
that ends it arrives, whatever the piece size."""

from __future__ import annotations

import numpy as np
import pytest

from duplex.serving.realtime.audio import PRIME_MS, WIRE_RATE, ChunkCutter, StreamResampler


@pytest.mark.parametrize("piece", [128, 480, 2400, 4800, 9600])
def test_chunk_k_is_complete_when_its_last_piece_arrives(piece: int) -> None:
    rate, chunk = 16000, 3200  # 200 ms chunks of the model
    rs, cutter = StreamResampler(WIRE_RATE, rate), ChunkCutter(2 * chunk)
    rng = np.random.default_rng(piece)
    wire = (rng.standard_normal(WIRE_RATE * 4) * 3000).astype("<i2")
    chunks_out = 0
    for i in range(len(wire) // piece):
        chunks_out += len(cutter.feed(rs.feed(wire[i * piece : (i + 1) * piece].tobytes())))
        covered_ms = (i + 1) * piece * 1000 // WIRE_RATE
        assert chunks_out >= covered_ms // 200  # every chunk the input covers has been cut


def test_a_tone_passes_at_its_level_shifted_by_the_priming() -> None:
    t = np.arange(WIRE_RATE) / WIRE_RATE
    wire = (np.sin(2 * np.pi * 440 * t) * 10000).astype("<i2")
    rs = StreamResampler(WIRE_RATE, 16000)
    out = np.frombuffer(b"".join(rs.feed(wire[i : i + 480].tobytes()) for i in range(0, len(wire), 480)), "<i2")
    prime = PRIME_MS * 16
    assert not out[:prime].any()  # the priming silence
    body = out[prime + 400 : 15000].astype(np.float64)
    assert abs(np.sqrt(np.mean(body**2)) - 10000 / np.sqrt(2)) < 200
    # a tone above the model's Nyquist (10 kHz at 24 kHz) is filtered out, not folded back into the band
    high = (np.sin(2 * np.pi * 10000 * t) * 10000).astype("<i2")
    rs = StreamResampler(WIRE_RATE, 16000)
    out = np.frombuffer(b"".join(rs.feed(high[i : i + 480].tobytes()) for i in range(0, len(high), 480)), "<i2")
    assert np.sqrt(np.mean(out[prime + 400 : 15000].astype(np.float64) ** 2)) < 100
