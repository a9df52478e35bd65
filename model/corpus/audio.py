"""Signal processing for the corpus: voice colouring (EQ), rooms, noise and levels. WAV files and the one
rate change (espeak-ng's 22050 Hz → the wire's 16 kHz, docs/model.md) are the project's own:
``duplex.model.audio_io`` (``read_wav``/``write_wav``, ``resample`` with soxr HQ, linear phase with its filter
delay compensated, so word timings survive the rate change unshifted).

Everything here is plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
SAMPLE_RATE = 16_000
NoiseColor = Literal["white", "pink", "brown"]
NOISE_COLORS: tuple[NoiseColor, ...] = ("white", "pink", "brown")


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms(x: npt.NDArray[np.floating]) -> float:
    """Root mean square of a signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@dataclass(frozen=True)
class EqSettings:
    """A simple 'microphone and voice colour' EQ: spectral tilt, a high-pass and one peak/notch."""

    tilt_db_per_octave: float
    highpass_hz: float
    peak_hz: float
    peak_db: float


def random_eq(rng: np.random.Generator) -> EqSettings:
    return EqSettings(
        tilt_db_per_octave=float(rng.uniform(-3.0, 3.0)),
        highpass_hz=float(rng.uniform(50.0, 300.0)),
        peak_hz=float(rng.uniform(800.0, 4000.0)),
        peak_db=float(rng.uniform(-8.0, 8.0)),
    )


def eq_filter(eq: EqSettings, taps: int = 129) -> FloatArray:
    """Linear-phase FIR by frequency sampling; applied centred, so it delays nothing."""
    nfft = 1024
    f = np.linspace(0.0, SAMPLE_RATE / 2, nfft // 2 + 1)
    fs = np.maximum(f, 20.0)
    gain_db = eq.tilt_db_per_octave * np.log2(fs / 1000.0)
    ratio = (fs / eq.highpass_hz) ** 2
    gain_db += 20 * np.log10(ratio / np.sqrt(1 + ratio**2))
    gain_db += eq.peak_db * np.exp(-0.5 * (np.log2(fs / eq.peak_hz) / 0.5) ** 2)
    impulse = np.fft.irfft(10 ** (gain_db / 20), nfft)
    impulse = np.roll(impulse, taps // 2)[:taps] * np.hanning(taps)
    return impulse.astype(np.float32)


def apply_fir(x: FloatArray, h: FloatArray) -> FloatArray:
    """Centred FIR filtering; the output is longer by len(h) - 1 so pre- and post-ringing are kept."""
    return np.convolve(x, h, mode="full").astype(np.float32)


@dataclass(frozen=True)
class RoomSettings:
    """A synthetic room: exponentially decaying noise tail after a pre-delay, mixed under the direct path."""

    rt60_s: float
    wet_db: float
    predelay_s: float


def random_room(rng: np.random.Generator) -> RoomSettings:
    return RoomSettings(
        rt60_s=float(rng.uniform(0.12, 0.5)),
        wet_db=float(rng.uniform(-22.0, -8.0)),
        predelay_s=float(rng.uniform(0.003, 0.02)),
    )


def room_impulse(room: RoomSettings, rng: np.random.Generator) -> FloatArray:
    n_tail = int(room.rt60_s * SAMPLE_RATE)
    n_pre = int(room.predelay_s * SAMPLE_RATE)
    t = np.arange(n_tail) / SAMPLE_RATE
    tail = rng.standard_normal(n_tail) * np.exp(-6.9 * t / room.rt60_s)
    tail *= db_to_gain(room.wet_db) / max(float(np.sqrt(np.sum(tail**2))), 1e-12)
    h = np.zeros(n_pre + n_tail, np.float64)
    h[0] = 1.0
    h[n_pre:] += tail
    return h.astype(np.float32)


def fft_convolve(x: FloatArray, h: FloatArray) -> FloatArray:
    """Convolution truncated to len(x) (the conversation's time axis is fixed)."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, color: NoiseColor) -> FloatArray:
    """Unit-RMS noise with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum.

    Shaped in the frequency domain over a power-of-two length (an FFT of an arbitrary length with large
    prime factors costs ten times more), then cut to ``n``.
    """
    size = 1 << max(n - 1, 1).bit_length()
    white = rng.standard_normal(size)
    if color != "white":
        alpha = 1.0 if color == "pink" else 2.0
        spectrum = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE), 20.0)
        white = np.fft.irfft(spectrum / f ** (alpha / 2), size)
    noise = white[:n]
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def to_pcm16(x: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    return np.clip(np.round(np.asarray(x) * 32767.0), -32768, 32767).astype(np.int16)
