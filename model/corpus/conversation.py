"""Script, render and mix one two-party conversation on a single 16 kHz time axis.

The script is laid out in samples from *rendered* audio: every utterance is trimmed to its first and
last audible sample before it is placed, so the event times (user_turn_end above all) are measured
from the audio, not guessed from the text. The user's microphone track gets a room, noise and gain
steps; the model track is the clean target of a perfect full-duplex model: it answers 150–300 ms after
the user stops, back-channels in long turns, and falls silent 120–200 ms after the user barges in.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from duplex.model.audio_io import write_wav
from duplex.model.corpus import audio, textgen
from duplex.model.corpus.audio import SAMPLE_RATE, FloatArray
from duplex.model.corpus.flite import random_flite_voice
from duplex.model.corpus.tts import MODEL_VOICE, Espeak, Rendering, UserVoice, Voice, random_user_voice, render

FORMAT = "duplex-corpus/1"
MODEL_LEVEL_DBFS = -24.0
BACKCHANNEL_SPOKEN = {"mm-hm": "[[m'm h@m]]"}  # espeak spells "mm-hm" out; give it phonemes instead
BARGE_IN_OPENERS = ("wait, ", "sorry, ", "actually, ", "no, no, ", "hold on, ", "hang on, ", "oh, ")


@dataclass(frozen=True)
class Timing:
    """Ground-truth behaviour of the perfect model and of the scripted user (seconds)."""

    reply_gap: tuple[float, float] = (0.15, 0.30)
    pause: tuple[float, float] = (0.20, 0.90)
    barge_reaction: tuple[float, float] = (0.12, 0.20)
    barge_fade: tuple[float, float] = (0.02, 0.05)
    silence: tuple[float, float] = (1.5, 4.0)
    user_gap: tuple[float, float] = (0.25, 1.2)
    p_barge_in: float = 0.3
    p_silence: float = 0.3
    p_backchannel_pause: float = 0.45
    p_backchannel_overlap: float = 0.25
    voice_warp: tuple[float, float] = (1.0, 1.0)
    """Range of the espeak-ng user voice's vocal-tract and tempo warp (1.0 = as espeak-ng renders it)."""


@dataclass(frozen=True)
class ConversationSpec:
    """Everything that determines one conversation: its id, seeds, split and the variants it may use."""

    conversation_id: str
    corpus_seed: int
    index: int
    split: str
    variants: tuple[str, ...]
    min_duration_s: float = 45.0
    max_duration_s: float = 90.0
    timing: Timing = Timing()
    """Ground-truth timing of the perfect model (reply gap, barge-in reaction…) and of the user."""
    engine: str = "espeak-ng"
    """The user's TTS engine: ``espeak-ng`` (a voice from ``variants``) or ``flite`` (the held-out engine)."""
    task: str = "turns"
    """``turns`` (ordinary turn-taking), ``timespeak`` (timed requests between ordinary exchanges) or
    ``action-count`` (a video clip and a question about it)."""
    timed_max_n: int = 30
    """TimeSpeak: the longest delay or period a request asks for (2..30 s)."""


def _s(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def _span(event_type: str, start: int, end: int, /, **fields: Any) -> dict[str, Any]:
    """One event: times in seconds and in samples (end exclusive) on the shared time axis."""
    return {
        "type": event_type,
        "start": round(start / SAMPLE_RATE, 6),
        "end": round(end / SAMPLE_RATE, 6),
        "start_sample": start,
        "end_sample": end,
        **fields,
    }


def _words(r: Rendering, at: int, upto: int | None = None) -> list[dict[str, Any]]:
    limit = len(r.samples) if upto is None else upto
    return [
        {
            "word": w.text,
            "start": round((at + w.start) / SAMPLE_RATE, 4),
            "end": round((at + min(w.end, limit)) / SAMPLE_RATE, 4),
        }
        for w in r.words
        if w.start < limit
    ]


@dataclass
class _Track:
    """Utterances placed on a track; mixing happens once the length is known."""

    pieces: list[tuple[int, FloatArray]] = field(default_factory=list)

    def place(self, at: int, x: FloatArray) -> None:
        self.pieces.append((at, x))

    def mix(self, n: int) -> FloatArray:
        out = np.zeros(n, np.float32)
        for at, x in self.pieces:
            out[at : at + len(x)] += x
        return out


@dataclass
class Conversation:
    """A rendered conversation: the three tracks and its events.json document."""

    user: FloatArray
    user_clean: FloatArray
    model: FloatArray
    doc: dict[str, Any]
    video: npt.NDArray[np.uint8] | None = None
    """(K, H, W, 3) RGB frames, one per 200 ms chunk (``--task action-count``), written as ``video.npy``."""

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.video is not None:
            np.save(directory / "video.npy", self.video, allow_pickle=False)
        write_wav(directory / "user.wav", audio.to_pcm16(self.user), SAMPLE_RATE)
        write_wav(directory / "user_clean.wav", audio.to_pcm16(self.user_clean), SAMPLE_RATE)
        write_wav(directory / "model.wav", audio.to_pcm16(self.model), SAMPLE_RATE)
        (directory / "events.json").write_text(json.dumps(self.doc, indent=1) + "\n")


class _Builder:
    """Lays out turns left to right; ``model_free`` is when the model track is next free to speak."""

    def __init__(self, spec: ConversationSpec, timing: Timing) -> None:
        self.rng = np.random.default_rng([spec.corpus_seed, 1, spec.index])
        self.timing = timing
        self.spec = spec
        self.voice: UserVoice = random_flite_voice(self.rng) if spec.engine == "flite" else self._espeak_voice(spec)
        self.user_level = float(self.rng.uniform(-34.0, -26.0))
        self.eq = audio.random_eq(self.rng) if self.rng.random() < 0.6 else None
        self.fir = audio.eq_filter(self.eq) if self.eq else None
        self.user, self.model = _Track(), _Track()
        self.events: list[dict[str, Any]] = []
        self.model_free = 0
        self.turn = 0
        self.model_turns = 0
        self.target = 0

    def _espeak_voice(self, spec: ConversationSpec) -> Voice:
        """A random variant/accent/rate/pitch, warped by a factor from its own stream (``Timing.voice_warp``)."""
        voice = random_user_voice(self.rng, spec.variants)
        lo, hi = self.timing.voice_warp
        warp = float(np.random.default_rng([spec.corpus_seed, 3, spec.index]).uniform(lo, hi)) if hi > lo else lo
        return replace(voice, warp=round(warp, 3))

    def u(self, lo_hi: tuple[float, float]) -> float:
        return float(self.rng.uniform(*lo_hi))

    def say_model(self, text: str, spoken: str | None = None) -> Rendering:
        return render(text, MODEL_VOICE, spoken=spoken, level_dbfs=MODEL_LEVEL_DBFS)

    def user_turn(self, at: int, barge_in: bool, max_clauses: int) -> tuple[int, textgen.UserTurn]:
        """Place one user turn starting at ``at``; returns its end (last speech sample + 1)."""
        opener = BARGE_IN_OPENERS[int(self.rng.integers(len(BARGE_IN_OPENERS)))] if barge_in else ""
        script = textgen.user_turn(self.rng, max_clauses=max_clauses, opener=opener)
        clauses = script.clauses
        renders = [
            render(c.text, self.voice, self.fir, level_dbfs=self.user_level + self.u((-2.0, 2.0))) for c in clauses
        ]
        cursor, spans = at, []
        for k, (clause, r) in enumerate(zip(clauses, renders, strict=True)):
            start, end = cursor, cursor + len(r.samples)
            self.user.place(start, r.samples)
            spans.append((start, end))
            self.events.append(
                _span(
                    "user_speech",
                    start,
                    end,
                    turn=self.turn,
                    clause=k,
                    text=clause.text,
                    cue=clause.cue,
                    words=_words(r, start),
                )
            )
            cursor = end
            if k < len(clauses) - 1:
                pause = _s(self.u(self.timing.pause))
                self.events.append(
                    _span("pause", end, end + pause, turn=self.turn, cue=clause.cue, conjunction=clause.conjunction)
                )
                cursor = end + pause
        turn_end = spans[-1][1]
        self.events.append(
            _span(
                "user_turn",
                at,
                turn_end,
                turn=self.turn,
                text=" ".join(c.text for c in clauses),
                question=script.is_question,
                barge_in=barge_in,
                clauses=len(clauses),
            )
        )
        self.events.append(_span("user_turn_end", turn_end, turn_end, turn=self.turn))
        if len(clauses) > 1 or turn_end - at > _s(3.0):
            self.backchannels(spans, turn_end)
        return turn_end, script

    def backchannels(self, spans: list[tuple[int, int]], turn_end: int) -> None:
        """'mm-hm' in mid-turn pauses, or late inside a long non-final clause (overlapping the user)."""
        for k in range(len(spans) - 1):
            (c_start, c_end), next_start = spans[k], spans[k + 1][0]
            if next_start - c_end >= _s(0.35) and self.rng.random() < self.timing.p_backchannel_pause:
                at, placement = c_end + _s(self.u((0.08, 0.2))), "pause"
            elif c_end - c_start >= _s(2.0) and self.rng.random() < self.timing.p_backchannel_overlap:
                at, placement = c_start + int((c_end - c_start) * self.u((0.7, 0.9))), "overlap"
            else:
                continue
            word = textgen.BACKCHANNELS[int(self.rng.integers(len(textgen.BACKCHANNELS)))]
            r = self.say_model(word, BACKCHANNEL_SPOKEN.get(word))
            end = at + len(r.samples)
            if at < self.model_free + _s(0.1) or end > turn_end - _s(0.1):
                continue
            self.model.place(at, r.samples)
            self.model_free = end
            self.events.append(_span("backchannel", at, end, turn=self.turn, text=word, placement=placement))

    def model_turn(
        self, at: int, text: str, reply_to: int | None, question: bool, user_turn_end: int | None, allow_barge: bool
    ) -> tuple[int, int | None]:
        """Place a model reply; returns (end of model speech, barge-in onset or None).

        A barge-in cuts the reply: the user starts a new turn at ``onset`` and the model track fades out
        to silence by ``onset + reaction`` (120–200 ms). The recorded text is what had been spoken: the
        words that started before the stop.
        """
        r = self.say_model(text)
        n, index = len(r.samples), self.model_turns
        self.model_turns += 1
        kind = "answer" if question else ("greeting" if reply_to is None else "response")
        common: dict[str, Any] = {"model_turn": index, "reply_to": reply_to, "kind": kind, "full_text": text}
        if user_turn_end is not None:
            common["gap_s"] = round((at - user_turn_end) / SAMPLE_RATE, 6)
        if allow_barge and n > _s(1.0) and self.rng.random() < self.timing.p_barge_in:
            onset = at + self.audible_point(r.samples, _s(0.35), int(0.75 * n) - _s(0.3))
            stop = onset + _s(self.u(self.timing.barge_reaction))
            fade = _s(self.u(self.timing.barge_fade))
            kept = r.samples[: stop - at].copy()
            kept[-fade:] *= np.linspace(1.0, 0.0, fade + 1, dtype=np.float32)[1:]
            end = at + int(np.flatnonzero(audio.to_pcm16(kept))[-1]) + 1
            self.model.place(at, kept)
            spoken = _words(r, at, upto=stop - at)
            said = " ".join(w["word"] for w in spoken)
            self.events.append(_span("model_turn", at, end, text=said, interrupted=True, words=spoken, **common))
            self.events.append(
                _span(
                    "barge_in",
                    onset,
                    stop,
                    user_turn=self.turn + 1,
                    model_turn=index,
                    user_onset=round(onset / SAMPLE_RATE, 6),
                    model_stop=round(stop / SAMPLE_RATE, 6),
                    reaction_s=round((stop - onset) / SAMPLE_RATE, 6),
                    fade_s=round(fade / SAMPLE_RATE, 6),
                    spoken_text=said,
                )
            )
            self.model_free = stop
            return end, onset
        self.model.place(at, r.samples)
        self.events.append(_span("model_turn", at, at + n, text=text, interrupted=False, words=_words(r, at), **common))
        self.model_free = at + n
        return at + n, None

    def video(self, n: int) -> npt.NDArray[np.uint8] | None:
        """The conversation's video frames for ``n`` samples (None: it has no video)."""
        return None

    def audible_point(self, x: FloatArray, lo: int, hi: int) -> int:
        """A random sample in [lo, hi) where the model is audibly speaking (20 ms RMS > RMS - 10 dB), so a
        barge-in overlaps model speech rather than a pause between its sentences."""
        frame = _s(0.02)
        energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
        centre = np.arange(lo, hi)
        a, b = np.clip(centre - frame // 2, 0, len(x)), np.clip(centre + frame // 2, 0, len(x))
        local = np.sqrt((energy[b] - energy[a]) / frame)
        candidates = centre[local > audio.rms(x) * 10 ** (-10 / 20)]
        return int(candidates[self.rng.integers(len(candidates))]) if len(candidates) else lo

    def script(self) -> int:
        """Lay out the whole conversation; returns its length in samples."""
        target = self.target = _s(self.u((self.spec.min_duration_s, self.spec.max_duration_s)))
        t = _s(self.u((0.3, 1.2)))
        if self.rng.random() < 0.4:
            end, _ = self.model_turn(t, textgen.greeting(self.rng), None, False, None, allow_barge=False)
            t = end + _s(self.u(self.timing.user_gap))
        barge = False
        while True:
            # near the target length, keep turns to one clause so conversations end close to it
            turn_end, script = self.user_turn(t, barge, max_clauses=3 if target - t > _s(10.0) else 1)
            reply_at = max(turn_end + _s(self.u(self.timing.reply_gap)), self.model_free + _s(0.05))
            room_left = target - reply_at > _s(6.0)
            model_end, onset = self.model_turn(
                reply_at, script.reply, self.turn, script.is_question, turn_end, allow_barge=room_left
            )
            self.turn += 1
            if onset is not None:
                t, barge = onset, True
                continue
            barge = False
            if model_end >= target:
                return model_end + _s(self.u((0.5, 1.5)))
            if self.rng.random() < self.timing.p_silence:
                gap = _s(self.u(self.timing.silence))
                self.events.append(_span("silence", model_end, model_end + gap))
            else:
                gap = _s(self.u(self.timing.user_gap))
            t = model_end + gap

    def noise_envelope(self, n: int) -> tuple[audio.NoiseColor, FloatArray]:
        """Noise SNR (re the user's speech level) in 1–3 segments, 0.5 s cross-fades in dB."""
        color = audio.NOISE_COLORS[int(self.rng.integers(len(audio.NOISE_COLORS)))]
        k = int(self.rng.integers(1, 4))
        cuts = [0, *sorted(int(c) for c in self.rng.uniform(0.15, 0.85, k - 1) * n), n]
        snrs = [self.u((15.0, 40.0)) for _ in range(k)]
        level_db = np.empty(n, np.float32)
        for a, b, snr in zip(cuts[:-1], cuts[1:], snrs, strict=True):
            level_db[a:b] = self.user_level - snr
            self.events.append(_span("noise", a, b, color=color, snr_db=round(snr, 2)))
        for c, (before, after) in zip(cuts[1:-1], itertools.pairwise(snrs), strict=True):
            half = _s(0.25)
            lo, hi = max(c - half, 0), min(c + half, n)
            level_db[lo:hi] = self.user_level - np.linspace(before, after, hi - lo, dtype=np.float32)
        return color, (10 ** (level_db / 20)).astype(np.float32)

    def gain_envelope(self, n: int) -> FloatArray:
        """Microphone gain steps of 6–12 dB (20 ms ramps), kept within ±12 dB of the starting gain."""
        gain_db = np.zeros(n, np.float32)
        current, ramp = 0.0, _s(0.02)
        candidates = sorted(
            int(x) for x in self.rng.uniform(_s(1.0), max(n - _s(1.0), _s(1.5)), int(self.rng.integers(0, 4)))
        )
        times = [at for k, at in enumerate(candidates) if k == 0 or at - candidates[k - 1] >= _s(1.0)]
        for at in times:
            step = self.u((6.0, 12.0)) * (1 if self.rng.random() < 0.5 else -1)
            if abs(current + step) > 12.0:
                step = -step
            new = current + step
            gain_db[at : at + ramp] = np.linspace(current, new, min(ramp, n - at), dtype=np.float32)
            gain_db[at + ramp :] = new
            self.events.append(
                _span("gain_change", at, min(at + ramp, n), from_db=round(current, 3), to_db=round(new, 3))
            )
            current = new
        return (10 ** (gain_db / 20)).astype(np.float32)


def generate(spec: ConversationSpec, timing: Timing | None = None) -> Conversation:
    """Script, render and mix one conversation (deterministic in a fresh process, see tts.py)."""
    if spec.task == "timespeak":
        from duplex.model.corpus.timespeak import TimeSpeakBuilder

        b: _Builder = TimeSpeakBuilder(spec, timing or spec.timing)
    elif spec.task == "action-count":
        from duplex.model.corpus.actions import ActionCountBuilder

        b = ActionCountBuilder(spec, timing or spec.timing)
    else:
        b = _Builder(spec, timing or spec.timing)
    Espeak.get().seed(spec.corpus_seed * 1_000_003 + spec.index)
    n = b.script()
    user_clean = b.user.mix(n)
    model = b.model.mix(n)
    room = audio.random_room(b.rng) if b.rng.random() < 0.5 else None
    wet = audio.fft_convolve(user_clean, audio.room_impulse(room, b.rng)) if room else user_clean
    color, noise_gain = b.noise_envelope(n)
    gain = b.gain_envelope(n)
    mic = (wet + audio.colored_noise(b.rng, n, color) * noise_gain) * gain
    peak = float(np.max(np.abs(mic)))
    scale_db = 20 * np.log10(0.99 / peak) if peak > 0.99 else 0.0
    mic *= np.float32(audio.db_to_gain(scale_db))
    b.events.sort(key=lambda e: (e["start_sample"], e["end_sample"]))
    doc = {
        "format": FORMAT,
        "id": spec.conversation_id,
        "split": spec.split,
        "corpus_seed": spec.corpus_seed,
        "index": spec.index,
        "sample_rate": SAMPLE_RATE,
        "num_samples": n,
        "duration_s": round(n / SAMPLE_RATE, 6),
        "target_duration_s": round(b.target / SAMPLE_RATE, 3),
        "files": {"user": "user.wav", "user_clean": "user_clean.wav", "model": "model.wav"},
        "user_voice": b.voice.to_json(),
        "model_voice": MODEL_VOICE.to_json(),
        "augmentation": {
            "user_speech_level_dbfs": round(b.user_level, 3),
            "eq": None if b.eq is None else {k: round(v, 3) for k, v in vars(b.eq).items()},
            "room": None if room is None else {k: round(v, 4) for k, v in vars(room).items()},
            "noise_color": color,
            "output_scale_db": round(scale_db, 3),
        },
        "events": b.events,
    }
    if spec.task != "turns":  # a turn-taking corpus keeps the bytes it had before tasks existed
        doc = {"format": FORMAT, "task": spec.task, **{k: v for k, v in doc.items() if k != "format"}}
    return Conversation(user=mic, user_clean=user_clean, model=model, doc=doc, video=b.video(n))
