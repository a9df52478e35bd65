from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from duplex.model.audio_io import read_wav, write_wav
from duplex.model.codec import BRIGHT_BINS, CODEBOOK, PITCH_BINS, Codec, pitch_hz
from duplex.model.config import ModelConfig, ModelError


@pytest.fixture(scope="module")
def codec(tiny: ModelConfig) -> Codec:
    return Codec(tiny)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """Real TTS speech (espeak-ng) with a second of silence in the middle, 16 kHz."""
    d = tmp_path_factory.mktemp("speech")
    parts = []
    for i, text in enumerate(["Hello there, how are you today?", "I am fine, thank you very much."]):
        raw = d / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
        parts.append(read_wav(raw, 16000, mono=True).samples.astype(np.float32) / 32768)
    x = np.concatenate([parts[0], np.zeros(16000, np.float32), parts[1]])
    return torch.from_numpy(x[: len(x) // 640 * 640])[None]


def frame_db(x: torch.Tensor) -> torch.Tensor:
    return 20 * torch.log10(x.reshape(-1, 640).pow(2).mean(-1).sqrt() + 1e-9)


def test_round_trip_keeps_when_and_how_loud(codec: Codec, speech: torch.Tensor) -> None:
    codes = codec.encode(speech)
    out = codec.decode(codes, codec.new_state(1))
    assert out.shape == speech.shape
    src, dec = frame_db(speech), frame_db(out)
    speaking = src > -40
    assert speaking.float().mean() > 0.3  # the fixture really has speech
    assert (codes[0][src < -60] == 0).all()  # silence encodes to the silence code
    # decoded loudness follows the source within a quantisation step + the inter-frame ramp
    err = (dec[1:][speaking[1:] & speaking[:-1]] - src[1:][speaking[1:] & speaking[:-1]]).abs()
    assert float(err.median()) < 3.0
    # a silent frame after a silent frame decodes to digital silence (the ramp-down takes one frame)
    c = codes[0]
    quiet = ((c[1:] == 0) & (c[:-1] == 0)).nonzero().flatten() + 1
    assert len(quiet) > 20  # the one-second gap alone gives 25
    assert float(out.reshape(-1, 640)[quiet].abs().max()) == 0.0


def test_pitch_of_a_tone_survives(codec: Codec, tiny: ModelConfig) -> None:
    t = torch.arange(16000 * 1) / 16000
    tone = 0.2 * torch.sin(2 * torch.pi * 150 * t)[None]
    codes = codec.encode(tone)
    pitch = (codes // BRIGHT_BINS) % PITCH_BINS
    expected = int(torch.argmin((pitch_hz(torch.arange(1, PITCH_BINS)) - 150).abs())) + 1
    assert (pitch[0, 2:-2] == expected).float().mean() > 0.9
    out = codec.decode(codes, codec.new_state(1))[0, 3200:12800].numpy()
    spectrum = np.abs(np.fft.rfft(out))
    f_peak = np.argmax(spectrum) * 16000 / len(out)
    assert abs(f_peak - float(pitch_hz(torch.tensor(expected)))) < 10


def test_streaming_decode_is_continuous(codec: Codec) -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, CODEBOOK, (3, 20), generator=g)
    pitch = torch.randint(1, PITCH_BINS, (20,), generator=g)
    codes[0] = 8 * 64 + pitch * BRIGHT_BINS + torch.randint(0, BRIGHT_BINS, (20,), generator=g)  # voiced
    whole = codec.decode(codes, codec.new_state(3))
    st = codec.new_state(3)
    pieces = torch.cat([codec.decode(codes[:, i : i + 5], st) for i in range(0, 20, 5)], 1)
    torch.testing.assert_close(pieces, whole, atol=2e-3, rtol=0)
    # no clicks: in the voiced session, jumps across frame joins are no larger than inside frames
    jumps = whole[0].diff().abs().reshape(-1)
    at_joins = jumps[639::640]
    inside = jumps.reshape(-1)[torch.arange(len(jumps)) % 640 != 639]
    assert float(at_joins.max()) <= float(inside.max())


def test_bad_codes_rejected(codec: Codec, tiny: ModelConfig) -> None:
    with pytest.raises(ModelError, match=r"audio codes must be in \[0, 1024\)"):
        codec.decode(torch.tensor([[0, 5000]]), codec.new_state(1))
    with pytest.raises(ModelError, match=r"codec\.encode wants"):
        codec.encode(torch.zeros(1, 1000))
    with pytest.raises(ModelError, match="audio_codes=512"):
        Codec(ModelConfig(**{**tiny.model_dump(), "audio_codes": 512}))


def test_decode_writes_through_slot_views(codec: Codec) -> None:
    """The engine decodes a block of slots through views of one state: the writes must land."""
    st = codec.new_state(4)
    view = type(st)(st.phase[2:4], st.amp[2:4], st.f0[2:4], st.noise_pos[2:4])
    codec.decode(torch.full((2, 5), 15 * 64 + 3 * 8 + 2), view)
    assert (st.amp[2:4] > 0).all() and (st.amp[:2] == 0).all()


def test_write_to_wav_for_listening(codec: Codec, speech: torch.Tensor, tmp_path: Path) -> None:
    out = codec.decode(codec.encode(speech), codec.new_state(1))
    pcm = (out[0].numpy() * 32767).astype(np.int16)
    write_wav(tmp_path / "x.wav", pcm, 16000)
    assert (tmp_path / "x.wav").stat().st_size == 44 + 2 * speech.shape[1]
