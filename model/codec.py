"""Reference audio codec: one code per 40 ms frame ↔ waveform. A parametric "buzz" vocoder.

Honest quality statement: it keeps *when* the model speaks, how loud, the pitch contour and a coarse
brightness — what turn-taking, back-channels and barge-in timing need — and nothing else. There are no
formants, so words are NOT intelligible. Timing is the point, not voice quality; a neural codec can replace
it behind the same ``encode``/``decode`` interface (model ``audio_codes`` must match its codebook).

A code packs three quantised parameters, ``code = energy * 64 + pitch * 8 + brightness``:
  energy      16 levels: 0 = silence (< -55 dBFS RMS), 1..15 span -55..-6 dBFS
  pitch        8 bins: 0 = unvoiced (noise excitation), 1..7 log-spaced 85..300 Hz
  brightness   8 bins: share of energy above 1.5 kHz, log-scaled (dark vowel .. fricative)
Code 0 is the canonical silence.

encode (analysis) only builds training targets from the target model track. decode runs while serving:
per session a continuous phase accumulator reads band-limited single-period wavetables (voiced) or looped
shaped-noise tables (unvoiced); amplitude and pitch are ramped across each frame so frames join without
clicks. State is per session slot, like the model's (``CodecState``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ModelConfig, ModelError

ENERGY_LEVELS, PITCH_BINS, BRIGHT_BINS = 16, 8, 8
CODEBOOK = ENERGY_LEVELS * PITCH_BINS * BRIGHT_BINS
SILENCE_DB, TOP_DB = -55.0, -6.0
F0_LOW, F0_HIGH = 85.0, 300.0
TABLE_LEN, NOISE_LEN = 1024, 16384


def level_db(level: Tensor) -> Tensor:
    """dBFS RMS of energy levels 1..15."""
    return SILENCE_DB + (level.float() - 1.0) * (TOP_DB - SILENCE_DB) / (ENERGY_LEVELS - 2)


def pitch_hz(bins: Tensor) -> Tensor:
    """f0 of pitch bins 1..7."""
    return F0_LOW * (F0_HIGH / F0_LOW) ** ((bins.float() - 1.0) / (PITCH_BINS - 2))


@dataclass
class CodecState:
    """Per-slot decoder state: oscillator phase (cycles), last amplitude, last f0 (0 = unvoiced), noise cursor."""

    phase: Tensor
    amp: Tensor
    f0: Tensor
    noise_pos: Tensor

    def reset(self, slot: int) -> None:
        self.phase[slot] = 0.0
        self.amp[slot] = 0.0
        self.f0[slot] = 0.0
        self.noise_pos[slot] = 0  # not slot-dependent: a session's audio must not depend on its slot

    def move(self, src: int, dst: int) -> None:
        for t in (self.phase, self.amp, self.f0, self.noise_pos):
            t[dst] = t[src]


class Codec:
    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.audio_codes != CODEBOOK:
            raise ModelError(
                f"the reference codec has {CODEBOOK} codes but the model config has audio_codes={cfg.audio_codes}"
            )
        self.sr, self.S = cfg.sample_rate, cfg.frame_samples
        self.tables = self._wavetables()  # (PITCH_BINS, BRIGHT_BINS, TABLE_LEN), RMS 1
        self.noise = self._noise_tables()  # (BRIGHT_BINS, NOISE_LEN), RMS 1
        self._tables_flat, self._noise_flat = self.tables.flatten(), self.noise.flatten()
        self._ramp = torch.arange(1, self.S + 1, dtype=torch.float32) / self.S

    # ----- tables ---------------------------------------------------------------------------------
    def _wavetables(self) -> Tensor:
        t = torch.arange(TABLE_LEN, dtype=torch.float64) / TABLE_LEN
        tables = torch.zeros(PITCH_BINS, BRIGHT_BINS, TABLE_LEN, dtype=torch.float64)
        for p in range(1, PITCH_BINS):
            f0 = float(pitch_hz(torch.tensor(p)))
            n_harm = int(min(0.45 * self.sr, 5000.0) // f0)  # band-limited: no aliasing at the top pitch
            k = torch.arange(1, n_harm + 1, dtype=torch.float64)
            for b in range(BRIGHT_BINS):
                tilt = 2.5 - 2.0 * b / (BRIGHT_BINS - 1)  # harmonic k has amplitude k^-tilt
                wave = ((k**-tilt)[:, None] * torch.sin(2 * math.pi * k[:, None] * t)).sum(0)
                tables[p, b] = wave / wave.pow(2).mean().sqrt()
        return tables.float()

    def _noise_tables(self) -> Tensor:
        g = torch.Generator().manual_seed(1234)
        white = torch.randn(NOISE_LEN, generator=g, dtype=torch.float64)
        out = torch.zeros(BRIGHT_BINS, NOISE_LEN, dtype=torch.float64)
        for b in range(BRIGHT_BINS):
            a = 0.9 * (1 - b / (BRIGHT_BINS - 1))  # one-pole low-pass: dark noise .. white noise
            y = torch.zeros(NOISE_LEN, dtype=torch.float64)
            acc = 0.0
            for i, w in enumerate(white.tolist()):
                acc = a * acc + (1 - a) * w
                y[i] = acc
            out[b] = y / y.pow(2).mean().sqrt()
        return out.float()

    # ----- analysis -------------------------------------------------------------------------------
    def encode(self, audio: Tensor) -> Tensor:
        """audio (B, T*S) in [-1, 1] → codes (B, T) int64."""
        if audio.dim() != 2 or audio.shape[1] % self.S:
            raise ModelError(f"codec.encode wants (batch, frames*{self.S}) audio, got {tuple(audio.shape)}")
        x = audio.float().reshape(audio.shape[0], -1, self.S)
        x = x - x.mean(-1, keepdim=True)
        rms = x.pow(2).mean(-1).sqrt()
        db = 20 * torch.log10(rms + 1e-9)
        level = torch.round((db - SILENCE_DB) * (ENERGY_LEVELS - 2) / (TOP_DB - SILENCE_DB)) + 1
        energy = torch.where(db < SILENCE_DB, 0, level.clamp(1, ENERGY_LEVELS - 1)).long()

        spec = torch.fft.rfft(x, n=2 * self.S).abs().pow(2)  # (B, T, S+1)
        ac = torch.fft.irfft(spec)[..., : self.S]  # autocorrelation
        lo, hi = int(self.sr / 400), int(self.sr / 60)
        peak, lag = ac[..., lo:hi].max(-1)
        voiced = peak / (ac[..., 0] + 1e-9) > 0.35
        f0 = self.sr / (lag + lo).float()
        pbin = torch.round(torch.log(f0 / F0_LOW) / math.log(F0_HIGH / F0_LOW) * (PITCH_BINS - 2)) + 1
        pitch = torch.where(voiced, pbin.clamp(1, PITCH_BINS - 1), 0).long()

        freqs = torch.fft.rfftfreq(2 * self.S, 1 / self.sr)
        high = spec[..., freqs >= 1500].sum(-1) / (spec.sum(-1) + 1e-12)
        bright = torch.round((torch.log10(high + 1e-9) + 2.5) / 2.5 * (BRIGHT_BINS - 1))
        bright = bright.clamp(0, BRIGHT_BINS - 1).long()

        code = energy * (PITCH_BINS * BRIGHT_BINS) + pitch * BRIGHT_BINS + bright
        return torch.where(energy == 0, 0, code)

    # ----- synthesis ------------------------------------------------------------------------------
    def new_state(self, capacity: int) -> CodecState:
        st = CodecState(
            torch.zeros(capacity), torch.zeros(capacity), torch.zeros(capacity), torch.zeros(capacity, dtype=torch.long)
        )
        for s in range(capacity):
            st.reset(s)
        return st

    def decode(
        self, codes: Tensor, state: CodecState, rows: slice | None = None, active: Tensor | None = None
    ) -> Tensor:
        """codes (n, F) for the slot range ``rows`` (default ``0..n-1``) → waveform (n, F*S) float32 in [-1, 1].

        Like ``DuplexModel.step``: ``active`` (n,) bool marks the rows that really advance; an inactive row is
        computed but its state (phase, amplitude, pitch, noise cursor) is left as it was.
        """
        if codes.dim() != 2:
            raise ModelError(f"codec.decode wants (sessions, frames) codes, got {tuple(codes.shape)}")
        n, F = codes.shape
        rows = slice(0, n) if rows is None else rows
        start, stop, _ = rows.indices(state.phase.shape[0])
        if stop - start != n or rows.step not in (None, 1):
            raise ModelError(f"codec rows {rows} do not match {n} sessions of codes")
        if active is not None and active.shape != (n,):
            raise ModelError(f"codec active must be ({n},) bool, got {tuple(active.shape)}")
        if not codes.numel():
            return torch.zeros(n, 0)
        if int(codes.min()) < 0 or int(codes.max()) >= CODEBOOK:
            raise ModelError(f"audio codes must be in [0, {CODEBOOK}), got {int(codes.min())}..{int(codes.max())}")
        codes = codes.cpu()
        phase0, amp0, f00, npos0 = state.phase[rows], state.amp[rows], state.f0[rows], state.noise_pos[rows]
        energy = codes // (PITCH_BINS * BRIGHT_BINS)
        pitch = (codes // BRIGHT_BINS) % PITCH_BINS
        bright = codes % BRIGHT_BINS
        amp = torch.where(energy > 0, 10 ** (level_db(energy) / 20), 0.0)  # (n, F) target RMS
        f0 = torch.where(pitch > 0, pitch_hz(pitch), 0.0)
        # every frame ramps from the previous frame's amplitude/f0 to its own: (n, F) start and end values
        a_end, a_start = amp, torch.cat([amp0[:, None], amp[:, :-1]], dim=1)
        f_before = torch.cat([f00[:, None], f0[:, :-1]], dim=1)
        f_start = torch.where(f_before > 0, f_before, f0)  # glide only from a voiced frame
        ramp = self._ramp  # (S,) in (0, 1]
        a = a_start[..., None] + (a_end - a_start)[..., None] * ramp  # (n, F, S)
        inc = (f_start[..., None] + (f0 - f_start)[..., None] * ramp) / self.sr  # cycles per sample
        phase = (phase0[:, None] + torch.cumsum(inc.reshape(n, -1), dim=1)) % 1.0  # (n, F*S)
        idx = phase.reshape(n, F, self.S) * TABLE_LEN
        i0 = idx.long()
        frac = idx - i0
        base = ((pitch * BRIGHT_BINS + bright) * TABLE_LEN)[..., None]  # flat table offset per frame
        voiced = torch.lerp(self._tables_flat[base + i0], self._tables_flat[base + (i0 + 1) % TABLE_LEN], frac)
        npos = (npos0[:, None] + torch.arange(F * self.S)) % NOISE_LEN  # (n, F*S)
        unvoiced = self._noise_flat[(bright * NOISE_LEN)[..., None] + npos.reshape(n, F, self.S)]
        out = torch.where((pitch > 0)[..., None], voiced, unvoiced) * a
        new = (phase[:, -1], amp[:, -1], f0[:, -1], (npos0 + F * self.S) % NOISE_LEN)
        for t, old, value in zip(
            (state.phase, state.amp, state.f0, state.noise_pos), (phase0, amp0, f00, npos0), new, strict=True
        ):
            t[rows] = value if active is None else torch.where(active, value, old)
        return out.reshape(n, F * self.S).clamp(-1.0, 1.0)
