"""The client's audio towards the engine (``uplink.Uplink``), without a socket: held until SessionReady, then cut
into the model's chunks with consecutive ``seq``; too much early audio and ``clear`` as the docs say."""

from __future__ import annotations

import pytest

from duplex.serving.realtime.audio import WIRE_RATE
from duplex.serving.realtime.protocol import ClientError
from duplex.serving.realtime.uplink import MAX_EARLY_AUDIO_S, Uplink
from duplex.v1 import duplex_pb2 as pb

CHUNK = 3200  # 200 ms at 16 kHz


def ready() -> pb.SessionReady:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, encoding=pb.PCM16_LE)
    return pb.SessionReady(input_format=fmt, output_format=fmt, chunk_ms=200, frame_ms=40, chunk_samples=CHUNK)


def wire(ms: int) -> bytes:
    return bytes(2 * WIRE_RATE * ms // 1000)


def test_audio_before_ready_is_held_then_cut_into_chunks() -> None:
    up = Uplink(lambda: 7)
    assert up.feed(wire(500)) == []  # no chunk size yet
    early = up.live(ready())
    assert [e.audio.seq for e in early] == [0, 1]  # 500 ms (less the resampler's priming) holds two whole chunks
    assert all(len(e.audio.pcm) == 2 * CHUNK and e.audio.client_time_us == 7 for e in early)
    later = up.feed(wire(200))
    assert [e.audio.seq for e in later] == [2]


def test_too_much_early_audio_names_the_field() -> None:
    up = Uplink(lambda: 0)
    up.feed(wire(MAX_EARLY_AUDIO_S * 1000))
    with pytest.raises(ClientError, match="more than 10 s") as info:
        up.feed(wire(20))
    assert info.value.param == "audio" and info.value.code == "too_early"


def test_clear_drops_what_is_not_in_a_chunk_yet() -> None:
    up = Uplink(lambda: 0)
    up.live(ready())
    assert up.feed(wire(150)) == []
    up.clear()
    assert up.feed(wire(150)) == []  # the first 150 ms were dropped: 150 ms is still less than a chunk
    assert [e.audio.seq for e in up.feed(wire(100))] == [0]


def test_finish_sends_the_partial_chunk_padded_with_silence() -> None:
    """The end of the input: what the resampler held back and the partial chunk go out as the last chunks, the
    partial one completed with silence; nothing is left for a second ``finish``."""
    up = Uplink(lambda: 0)
    up.live(ready())
    tone = b"".join((8000 if (i // 12) % 2 else -8000).to_bytes(2, "little", signed=True) for i in range(3600))
    assert [e.audio.seq for e in up.feed(tone)] == []  # 150 ms: not a whole 200 ms chunk yet
    last = up.finish()
    assert [e.audio.seq for e in last] == [0] and up.chunks_sent == 1
    pcm = last[0].audio.pcm
    assert len(pcm) == 2 * CHUNK
    samples = [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    # 20 ms of priming, then the 150 ms of tone at 16 kHz (2400 samples, the filter's held-back tail included),
    # then silence to the chunk's end
    assert any(abs(s) > 1000 for s in samples[320:2720]) and not any(samples[2800:])
    assert up.finish() == []


def test_finish_at_a_chunk_boundary_adds_nothing() -> None:
    fmt = pb.AudioFormat(sample_rate=WIRE_RATE, channels=1, encoding=pb.PCM16_LE)
    at_wire = pb.SessionReady(input_format=fmt, output_format=fmt, chunk_ms=80, frame_ms=80, chunk_samples=1920)
    up = Uplink(lambda: 0)
    up.live(at_wire)
    assert [e.audio.seq for e in up.feed(wire(160))] == [0, 1]
    assert up.finish() == [] and up.chunks_sent == 2
