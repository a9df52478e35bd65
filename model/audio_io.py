"""The project's one WAV reader and writer (libsndfile through ``soundfile``) and its one resampler (``soxr``).

The corpus, training data, ``duplex talk`` and the tests all read and write WAV here. On disk the project
writes PCM16 little-endian WAV with a plain 44-byte header — byte-identical to what the standard library's
``wave`` module writes for the same samples. Reading accepts whatever libsndfile reads (8/16/24/32-bit PCM,
float, any channel count); a caller that needs the wire format asks for ``sample_rate`` and ``mono`` and gets
int16 samples converted with soxr's high-quality (HQ) linear-phase low-pass, which suppresses what lies above
the new Nyquist frequency instead of folding it back into the band as linear interpolation does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

RESAMPLER = "soxr HQ"
"""How every rate change in the project is done (named in what ``duplex talk`` prints)."""

_SAMPLE_WIDTH = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


class AudioFileError(ValueError):
    """A file that is not audio libsndfile can read; the message names the file."""


@dataclass(frozen=True)
class WavFormat:
    """What an audio file holds, from its header."""

    rate: int
    """Samples per second per channel."""
    channels: int
    """Interleaved channels per frame."""
    subtype: str
    """libsndfile's sample encoding, e.g. ``PCM_16``, ``PCM_24``, ``FLOAT``."""

    @property
    def sample_width(self) -> int:
        """Bytes per sample (0 for a compressed encoding)."""
        return _SAMPLE_WIDTH.get(self.subtype, 0)

    def describe(self) -> str:
        """``44100 Hz stereo``-style text for messages; the encoding is named unless it is PCM_16."""
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} channels")
        return f"{self.rate} Hz {layout}" + ("" if self.subtype == "PCM_16" else f" {self.subtype}")


@dataclass(frozen=True)
class Wav:
    """Samples read from a file, after any conversion ``read_wav`` was asked for."""

    samples: npt.NDArray[np.int16]
    """(n,) for one channel, (n, channels) otherwise."""
    rate: int
    """Sample rate of ``samples``."""
    channels: int
    """Channels of ``samples``."""
    file: WavFormat
    """What the file itself holds (differs from ``rate``/``channels`` when ``read_wav`` converted)."""

    @property
    def sample_width(self) -> int:
        """Bytes per sample in the file."""
        return self.file.sample_width

    @property
    def converted(self) -> bool:
        """Whether the samples differ in rate, channels or encoding from what the file holds."""
        return (self.rate, self.channels, self.file.subtype) != (self.file.rate, self.file.channels, "PCM_16")


AudioSource = Path | bytes
"""A file on disk, or a whole file's bytes (a WAV sent in a request)."""


def _open(source: AudioSource) -> str | io.BytesIO:
    """What libsndfile opens: the path, or a fresh stream over the bytes (each read starts at 0)."""
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def _name(source: AudioSource) -> str:
    return "the audio bytes" if isinstance(source, bytes) else str(source)


def wav_format(path: AudioSource) -> WavFormat:
    """The header of ``path`` (any format libsndfile reads)."""
    try:
        info = soundfile.info(_open(path))
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioFileError(f"{_name(path)}: not a readable audio file ({e})") from None
    return WavFormat(int(info.samplerate), int(info.channels), str(info.subtype))


def resample(x: npt.NDArray[np.float32], rate_in: int, rate_out: int) -> npt.NDArray[np.float32]:
    """Band-limited rate change of float samples, (n,) or (n, channels), with soxr's HQ filter."""
    if rate_in == rate_out:
        return x
    y: npt.NDArray[np.float32] = soxr.resample(x, rate_in, rate_out, quality="HQ")
    return y


def _float_to_int16(x: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """Float samples on libsndfile's scale (int16 / 32768, so int16 → float → int16 is exact) → int16,
    rounded and clipped."""
    return np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def read_wav(path: AudioSource, sample_rate: int | None = None, mono: bool = False) -> Wav:
    """int16 samples of ``path`` (a file, or a file's bytes); resampled to ``sample_rate`` (soxr HQ) when given
    and different, and the channels averaged into one when ``mono``. A PCM16 file read as it is comes back bit-exact."""
    fmt = wav_format(path)
    rate = fmt.rate if sample_rate is None else sample_rate
    channels = 1 if mono else fmt.channels
    try:
        if (rate, channels) == (fmt.rate, fmt.channels):
            samples: npt.NDArray[np.int16] = soundfile.read(_open(path), dtype="int16")[0]
            return Wav(samples, rate, channels, fmt)
        x = soundfile.read(_open(path), dtype="float32", always_2d=True)[0]
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioFileError(f"{_name(path)}: cannot read the audio ({e})") from None
    if mono:
        x = x.mean(axis=1, dtype=np.float32, keepdims=True)
    y = resample(np.ascontiguousarray(x), fmt.rate, rate)
    return Wav(_float_to_int16(y[:, 0] if channels == 1 else y), rate, channels, fmt)


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int) -> None:
    """PCM16 WAV of int16 ``samples`` ((n,) mono or (n, channels)) at ``rate``."""
    soundfile.write(str(path), np.asarray(samples, dtype=np.int16), rate, subtype="PCM_16", format="WAV")
