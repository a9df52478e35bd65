"""``duplex talk`` against a real engine: input conversion (soxr, said on stderr), the recording's two
placements (as heard, model time) and the client's capture-clock schedule (with an injected clock)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.audio_io import read_wav, write_wav
from duplex.serving import client, talk
from duplex.serving.spec import EngineSpec

from .conftest import API_KEY, AUTH, Stack, start_stack, stop_stack
from .helpers import eventually

SR = 16000
CHUNK = 3200


def stereo_tone(path: Path, rate: int, hz: float, seconds: float = 1.0, amp: float = 0.5) -> None:
    """A 16-bit stereo WAV with the same tone in both channels."""
    t = np.arange(int(seconds * rate)) / rate
    x = np.round(amp * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    write_wav(path, np.stack([x, x], axis=1), rate)


def linear_resample(path: Path) -> np.ndarray:
    """What ``duplex talk`` did before: channels averaged, then linear interpolation to 16 kHz."""
    x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    n = int(len(mono) * SR / rate)
    return np.interp(np.arange(n) * rate / SR, np.arange(len(mono)), mono)


def middle(x: np.ndarray) -> np.ndarray:
    """The steady middle half of a signal (clear of the filter's start and end transients)."""
    return x[len(x) // 4 : 3 * len(x) // 4].astype(np.float64)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_tone_above_the_new_nyquist_is_suppressed_not_folded(tmp_path: Path, rate: int) -> None:
    wav = tmp_path / "high.wav"
    stereo_tone(wav, rate, 12000.0)  # above 8 kHz: linear interpolation folds it to 4 kHz
    samples, note = talk.load_input(wav, SR)
    assert len(samples) == round(SR * 1.0)
    ours = rms(middle(samples / 32768.0))
    linear = rms(middle(linear_resample(wav)))
    assert linear > 0.1, "the reference must alias for the comparison to mean anything"
    assert ours < 1e-3 * linear, (ours, linear)  # ≥ 60 dB below what linear interpolation lets through
    assert note == f"converting high.wav {rate} Hz stereo → 16000 Hz mono (soxr HQ, channels averaged)"


@pytest.mark.parametrize("rate", [44100, 48000])
def test_an_in_band_tone_keeps_its_frequency_and_level(tmp_path: Path, rate: int) -> None:
    wav = tmp_path / "low.wav"
    stereo_tone(wav, rate, 1000.0)
    samples, _ = talk.load_input(wav, SR)
    x = middle(samples / 32768.0)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spectrum) * SR / len(x)
    assert abs(peak_hz - 1000.0) <= SR / len(x)  # within one FFT bin
    assert rms(x) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_a_16k_mono_pcm16_input_is_read_as_it_is(tmp_path: Path) -> None:
    x = (np.random.default_rng(1).standard_normal(SR) * 3000).astype(np.int16)
    write_wav(tmp_path / "in.wav", x, SR)
    samples, note = talk.load_input(tmp_path / "in.wav", SR)
    assert note is None
    assert samples.dtype == np.int16 and samples.tobytes() == x.tobytes()


@pytest.mark.parametrize("rate", [44100, 48000])
def test_talk_says_it_converts_the_input(stack: Stack, tmp_path: Path, rate: int) -> None:
    wav, out = tmp_path / f"in{rate}.wav", tmp_path / "out.wav"
    stereo_tone(wav, rate, 300.0, seconds=0.6)
    r = CliRunner().invoke(
        app,
        [
            "talk",
            "--target",
            stack.front_addr,
            "--api-key",
            API_KEY,
            "--input",
            str(wav),
            "--output",
            str(out),
            "--fast",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (
        f"duplex talk: converting in{rate}.wav {rate} Hz stereo → 16000 Hz mono (soxr HQ, channels averaged)"
        in r.stderr
    )
    assert "converting" not in r.stdout
    recorded = read_wav(out)
    assert (recorded.rate, recorded.channels, recorded.sample_width) == (SR, 1, 2)


def test_talk_names_an_input_that_is_not_audio(tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n")
    r = CliRunner().invoke(
        app, ["talk", "--target", "127.0.0.1:1", "--input", str(bad), "--output", str(tmp_path / "o.wav")]
    )
    assert r.exit_code == 2
    assert "duplex talk: --input:" in r.stderr and "notes.wav" in r.stderr and "not a readable audio file" in r.stderr


async def hold(stack: Stack, samples: np.ndarray, clock: client.Clock | None = None) -> client.Conversation:
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(ch, client.split_chunks(samples, CHUNK), metadata=AUTH, clock=clock)
    assert conv.code == grpc.StatusCode.OK, conv.details
    return conv


class SteppingClock:
    """A client clock that jumps to each time the client waits for: the schedule, without the waiting."""

    def __init__(self, start_us: int) -> None:
        self.t_us = start_us
        self.waits: list[int] = []

    def now_us(self) -> int:
        return self.t_us

    async def sleep_until(self, t_us: int) -> None:
        self.waits.append(t_us)
        self.t_us = max(self.t_us, t_us)
        await asyncio.sleep(0)  # let the stream make progress, as a real wait would


async def test_chunk_k_is_sent_when_captured(stack: Stack) -> None:
    """A microphone hands chunk k over at capture start + (k+1)·chunk_ms: the file-driven client sends on that
    schedule (chunk 0 at the server's phase hint), stamps each chunk with its send time, and sample 0 of the
    recording is the capture start — one chunk before chunk 0 was sent."""
    clock = SteppingClock(client.now_us())
    conv = await hold(stack, np.zeros(5 * CHUNK, np.int16), clock)
    (ready,) = conv.of("ready")
    assert ready.event.ready.send_in_us > 0
    assert conv.start_us == ready.t_us + ready.event.ready.send_in_us - 200_000
    assert conv.sent_us == {k: conv.start_us + (k + 1) * 200_000 for k in range(5)}
    for r in conv.of("audio"):
        a = r.event.audio
        assert a.timing.client_time_us == conv.sent_us[a.seq]
        assert r.t_us >= conv.sent_us[a.seq]


async def test_free_running_client_keeps_the_capture_axis(stack: Stack) -> None:
    """Without the hint the first chunk goes out at once; the axis still starts one chunk before it."""
    clock = SteppingClock(client.now_us())
    async with grpc.aio.insecure_channel(stack.front_addr) as ch:
        conv = await client.converse(
            ch, client.split_chunks(np.zeros(3 * CHUNK, np.int16), CHUNK), metadata=AUTH, clock=clock, follow_hint=False
        )
    assert conv.code == grpc.StatusCode.OK
    ready_at = next(r.t_us for r in conv.received if r.event.HasField("ready"))
    assert conv.sent_us[0] == ready_at == conv.start_us + 200_000
    assert conv.sent_us == {k: conv.start_us + (k + 1) * 200_000 for k in range(3)}


def expected_model_time(conv: client.Conversation, length: int) -> bytes:
    """The received PCM, each chunk written at its output_sample (silent chunks: zeros) — built here from
    the events, independently of ``Conversation.placements``."""
    out = np.zeros(length, np.int16)
    for r in conv.of("audio"):
        a = r.event.audio
        if a.pcm:
            out[a.output_sample : a.output_sample + a.samples] = np.frombuffer(a.pcm, "<i2")
    return out.tobytes()


async def test_model_time_recording_is_the_pcm_at_output_sample(
    stack: Stack, speech: np.ndarray, tmp_path: Path
) -> None:
    # the stepping clock sends ahead of real time: no chunk can be late on a loaded machine, so none is
    # substituted and the model hears exactly ``speech``
    conv = await hold(stack, speech, SteppingClock(client.now_us()))
    audio = [r.event.audio for r in conv.of("audio")]
    assert not any(a.timing.substituted for a in audio)
    assert sum(bool(a.pcm) for a in audio) > 0, "the model must speak for this test to mean anything"
    n = len(audio) * CHUNK

    talk.save(conv, speech, SR, tmp_path / "model_time.wav", None, None, model_time=True)
    talk.save(conv, speech, SR, tmp_path / "as_heard.wav", None, None)
    model_time, as_heard = read_wav(tmp_path / "model_time.wav"), read_wav(tmp_path / "as_heard.wav")
    assert len(model_time.samples) == max(len(speech), n)
    assert model_time.samples.tobytes() == expected_model_time(conv, len(model_time.samples))

    # as heard holds the same chunks, only placed later: each no earlier than one chunk after its model time
    # (its input chunk had to be captured and sent first) and never overlapping the one before
    heard = conv.placements(SR)
    assert [a.seq for _, a in heard] == [a.seq for a in audio]
    previous_end = 0
    for at, a in heard:
        assert at >= a.output_sample + CHUNK and at >= previous_end
        previous_end = at + a.samples
        pcm = np.frombuffer(a.pcm, "<i2") if a.pcm else np.zeros(a.samples, np.int16)
        assert as_heard.samples[at : at + a.samples].tobytes() == pcm.tobytes()


@pytest.fixture(scope="module")
def one_slot_stack(tiny_model: Any) -> Iterator[Stack]:
    """A replica with a single slot: every session runs in slot 0. The codec's noise position still depends
    on the slot (``CodecState.reset``), so until outputs are batch-invariant (issue 9, item 2) byte-equal runs
    need the same slot; this test then holds on any replica."""
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=1, cohorts=1)
    s = start_stack(spec, copy.deepcopy(tiny_model), keys=[API_KEY])
    yield s
    stop_stack(s)


async def test_two_runs_of_one_input_give_the_same_model_time_bytes(
    one_slot_stack: Stack, speech: np.ndarray, tmp_path: Path
) -> None:
    first = await hold(one_slot_stack, speech, SteppingClock(client.now_us()))
    # the slot is free again, and the picker knows it (its view is the engine's last load report)
    await eventually(lambda: one_slot_stack.active() == 0, what="the first session's slot freed")
    await asyncio.to_thread(one_slot_stack.poll_load)
    second = await hold(one_slot_stack, speech, SteppingClock(client.now_us()))
    talk.save(first, speech, SR, tmp_path / "1.wav", None, None, model_time=True)
    talk.save(second, speech, SR, tmp_path / "2.wav", None, None, model_time=True)
    assert (tmp_path / "1.wav").read_bytes() == (tmp_path / "2.wav").read_bytes()
