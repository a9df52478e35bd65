"""The independent speech detector every system's output audio is scored with (evaluation only).

It knows nothing about any model: frame energy on 10 ms hops against an absolute threshold, short gaps
bridged, blips dropped. Systems are compared on *their audio*, the way Full-Duplex-Bench scores published
systems, so the same detector decides when the duplex model and the VAD baseline start and stop talking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


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
