"""The V2 request contract without a server: tensors → an utterance at the model's rate → engine chunks."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput

from duplex.model.audio_io import write_wav
from duplex.serving.kserve import tensors
from duplex.serving.kserve.utterance import chunks_of

RATE = 16000


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)


def pcm_request(samples: np.ndarray, rate: int | None = None, **params: object) -> InferRequest:
    tensor = InferInput("pcm", [samples.size], "INT16", parameters=None if rate is None else {"sample_rate": rate})
    tensor.set_data_from_numpy(samples, binary_data=False)
    return InferRequest("duplex", [tensor], parameters=params or None)


def test_pcm_at_the_model_rate_is_taken_as_it_is() -> None:
    x = tone(0.5, RATE)
    u = tensors.parse_request(pcm_request(x), RATE)
    assert np.array_equal(u.samples, x)
    assert u.trailing_silence_ms == tensors.DEFAULT_TRAILING_SILENCE_MS and u.instructions == ""


def test_pcm_at_another_rate_is_resampled_keeping_its_pitch() -> None:
    u = tensors.parse_request(pcm_request(tone(1.0, 8000), rate=8000), RATE)
    assert u.samples.size == RATE
    spectrum = np.abs(np.fft.rfft(u.samples.astype(np.float64)))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bin k = k Hz


def test_a_44k_stereo_wav_file_is_converted(tmp_path: Path) -> None:
    stereo = np.stack([tone(0.5, 44100), tone(0.5, 44100)], axis=1)
    path = tmp_path / "in.wav"
    write_wav(path, stereo, 44100)
    audio = InferInput("audio", [1], "BYTES", data=[base64.b64encode(path.read_bytes()).decode()])
    u = tensors.parse_request(InferRequest("duplex", [audio], parameters={"trailing_silence_ms": 0}), RATE)
    assert u.samples.size == RATE // 2 and np.abs(u.samples).max() > 5000
    assert u.trailing_silence_ms == 0


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        (lambda: pcm_request(tone(0.1, RATE), rate=100), "`pcm` parameter sample_rate: 100 is outside"),
        (lambda: pcm_request(tone(0.1, RATE), trailing_silence_ms="soon"), "trailing_silence_ms: expected an integer"),
        (lambda: pcm_request(tone(0.1, RATE), instructions=3), "instructions: expected a string"),
        (lambda: pcm_request(np.zeros(0, np.int16)), "`pcm`: no samples"),
        (lambda: pcm_request(np.zeros(int(tensors.MAX_UTTERANCE_S * RATE) + 1, np.int16)), "longer than 120 s"),
    ],
)
def test_bad_requests_name_the_field(request_: object, named: str) -> None:
    with pytest.raises(InvalidInput) as e:
        tensors.parse_request(request_(), RATE)  # type: ignore[operator]
    assert named in str(e.value)


def test_chunks_pad_the_utterance_and_add_the_trailing_silence() -> None:
    u = tensors.Utterance(np.full(5000, 16384, np.int16), trailing_silence_ms=400, instructions="")
    chunks = [np.frombuffer(c, "<i2") for c in chunks_of(u, 3200, RATE)]
    assert [c.size for c in chunks] == [3200] * 4  # 2 for 5000 samples, 2 for 400 ms
    assert chunks[1][5000 - 3200 - 1] == 16384 and chunks[1][5000 - 3200] == 0
    assert all(not c.any() for c in chunks[2:])
