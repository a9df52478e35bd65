"""Speech gates: the one definition of "this input frame is user speech" (``voiced_frames``, used by the
engine's turn-latency metric and everything that asks the same question), and the independent speech
detector every system's output audio is scored with (evaluation, ``speech_segments``).

The scoring detector knows nothing about any model: frame energy on 10 ms hops against an absolute threshold, short gaps
bridged, blips dropped. Systems are compared on *their audio*, the way Full-Duplex-Bench scores published
systems, so the same detector decides when the duplex model and the VAD baseline start and stop talking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

USER_SPEECH_RMS = 0.01
"""Input frames louder than this (-40 dBFS RMS) are user speech (the turn-latency clock starts after them)."""


def voiced_frames(audio: Tensor, frame_samples: int) -> Tensor:
    """audio (n, F*frame_samples) float in [-1, 1] → (n, F) bool: which input frames are user speech."""
    frames = audio.reshape(audio.shape[0], -1, frame_samples)
    return torch.sqrt(frames.pow(2).mean(-1)) > USER_SPEECH_RMS


@dataclass(frozen=True)
class DetectorSettings:
    hop_ms: int = 10
    """Analysis hop."""
    threshold_db: float = -50.0
    """Frame RMS (dBFS) above which a hop is speech. The systems' outputs are clean (no noise floor)."""
    min_speech_ms: int = 40
    """Shorter bursts are dropped."""
    min_silence_ms: int = 150
    """Shorter gaps inside speech are bridged (stop consonants, the codec's unvoiced frames)."""


def speech_segments(
    audio: npt.NDArray[np.floating], sample_rate: int = 16000, settings: DetectorSettings | None = None
) -> list[tuple[float, float]]:
    """(onset, offset) seconds of every speech segment in a mono track."""
    s = settings or DetectorSettings()
    hop = sample_rate * s.hop_ms // 1000
    n = len(audio) // hop
    if n == 0:
        return []
    frames = np.asarray(audio[: n * hop], dtype=np.float64).reshape(n, hop)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    active = db > s.threshold_db
    segments: list[list[int]] = []
    for i in (int(x) for x in np.flatnonzero(active)):
        if segments and i - segments[-1][1] <= s.min_silence_ms // s.hop_ms:
            segments[-1][1] = i + 1
        else:
            segments.append([i, i + 1])
    min_len = s.min_speech_ms // s.hop_ms
    return [(a * s.hop_ms / 1000, b * s.hop_ms / 1000) for a, b in segments if b - a >= min_len]
