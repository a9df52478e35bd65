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
