"""Flite speech synthesis (Debian package ``flite``): the corpus's second TTS engine, kept out of training.

espeak-ng is a formant synthesiser; Flite joins recorded diphones (``kal``, ``kal16``) or speaks from
statistical parametric voices (``awb``, ``rms``, ``slt``), with its own intonation and duration models. A model
trained on espeak-ng voices and scored on Flite voices is scored on prosody, timbre and timing it never heard:
the ``heldout`` split of a corpus (``duplex corpus make --heldout-fraction``) is rendered this way.

Flite is run as a command, one utterance a call (~10–50 ms each): it is deterministic for a text and settings,
and reports no word timings, so a rendering's words share one span.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

FLITE_VOICES: tuple[str, ...] = ("kal", "kal16", "awb", "rms", "slt")
"""The English voices of the Debian package (``flite -lv``), less ``awb_time`` (it speaks only clock times)."""

_F0_MEAN = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}
"""Centre of each voice's random mean pitch (Hz); ``rms`` ignores the pitch target."""


class FliteError(RuntimeError):
    pass


@dataclass(frozen=True)
class FliteVoice:
    """A Flite voice with its speaking-rate stretch and pitch target (mean and spread, Hz)."""

    voice: str
    duration_stretch: float
    f0_mean: float
    f0_stddev: float

    @property
    def name(self) -> str:
        return f"flite:{self.voice}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": "flite",
            "voice": self.voice,
            "duration_stretch": self.duration_stretch,
            "f0_mean": self.f0_mean,
            "f0_stddev": self.f0_stddev,
        }

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int, list[tuple[int, int, int]]]:
        """Render ``text``: float samples, their rate, and no word events."""
        exe = shutil.which("flite")
        if exe is None:
            raise FliteError("the flite command is not installed; install the Debian package flite")
        with tempfile.TemporaryDirectory(prefix="duplex-flite-") as tmp:
            wav = Path(tmp) / "out.wav"
            settings = {
                "duration_stretch": self.duration_stretch,
                "int_f0_target_mean": self.f0_mean,
                "int_f0_target_stddev": self.f0_stddev,
            }
            args = [exe, "-voice", self.voice, "-t", text, "-o", str(wav)]
            for key, value in settings.items():
                args += ["--setf", f"{key}={value:.3f}"]
            done = subprocess.run(args, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not wav.is_file():
                raise FliteError(f"flite failed for {text!r} in voice {self.voice}: {done.stderr.strip()[-300:]}")
            samples, rate = sf.read(wav, dtype="float32")
        return np.asarray(samples, np.float32), int(rate), []


def random_flite_voice(rng: np.random.Generator) -> FliteVoice:
    voice = FLITE_VOICES[int(rng.integers(len(FLITE_VOICES)))]
    return FliteVoice(
        voice=voice,
        duration_stretch=round(float(rng.uniform(0.85, 1.2)), 3),
        f0_mean=round(_F0_MEAN[voice] * float(rng.uniform(0.85, 1.2)), 1),
        f0_stddev=round(float(rng.uniform(10.0, 30.0)), 1),
    )
