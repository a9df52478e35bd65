"""espeak-ng speech synthesis through its C library (``libespeak-ng.so.1``, Debian package espeak-ng).

Why the library and not the ``espeak-ng`` command: one process start per utterance would dominate the
CPU budget, and only the library reports *word events* (the audio position where each word starts),
which gives word-level text alignment for free.

Determinism caveat, measured: the synthesiser keeps state between calls (the glottal-pulse phase carries
over), so the same text rendered twice in one process differs by a few samples. Output is a pure function
of the *sequence* of calls since the library was loaded. The corpus builder therefore renders every
conversation in a fresh process (see ``make.py``) and calls ``srand`` (espeak-ng draws breath noise from
libc ``rand``) before the first utterance.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from duplex.model.audio_io import resample
from duplex.model.corpus.audio import SAMPLE_RATE, FloatArray, apply_fir, rms

# English-ish accents shipped by espeak-ng 1.51 (``espeak-ng --voices=en``; the mbrola voices need an
# extra package and are left out). "en" is British English (gmw/en).
ACCENTS: tuple[str, ...] = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Voice variants from espeak-ng-data/voices/!v that still sound like a person; robot, demon, whisper,
# "fast" and the model's own variant (m7) are excluded. Each was rendered and checked for level/length.
USER_VARIANTS: tuple[str, ...] = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "adam",
    "anika",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "ed",
    "edward",
    "edward2",
    "grandma",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "linda",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "zac",
    "announcer",
    "croak",
)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES = 0x100  # allow [[...]] phoneme input (used for "mm-hm", which espeak would spell out)
_EVENT_WORD = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_VOLUME = 50  # the default 100 clips several variants; levels are normalised afterwards anyway


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: accent + variant, speaking rate (words/min), pitch and pitch range (0–100)."""

    accent: str
    variant: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    warp: float = 1.0
    """Vocal-tract and tempo warp: the rendering is played ``warp`` times faster (pitch, formants and tempo
    all scale by it), which turns each espeak-ng variant into a family of speakers."""

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": "espeak-ng",
            "accent": self.accent,
            "variant": self.variant,
            "rate_wpm": self.rate_wpm,
            "pitch": self.pitch,
            "pitch_range": self.pitch_range,
            "warp": self.warp,
        }

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int, list[tuple[int, int, int]]]:
        """Render ``text`` with the process-wide espeak-ng: float samples, their rate, word events."""
        engine = Espeak.get()
        raw, events = engine.synth(text, self)
        rate = round(engine.sample_rate * self.warp)
        events = [(pos, length, round(ms / self.warp)) for pos, length, ms in events]
        return raw.astype(np.float32) / np.float32(32768.0), rate, events


class UserVoice(Protocol):
    """A voice of either engine: espeak-ng (``Voice``) or Flite (``flite.FliteVoice``)."""

    @property
    def name(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int, list[tuple[int, int, int]]]:
        """Float samples, their rate, and word events (char position, length, ms); no events = no timings."""
        ...


MODEL_VOICE = Voice(accent="en-us", variant="m7", rate_wpm=175, pitch=45, pitch_range=50)
"""The one voice of the target model track: US English, variant m7, 175 wpm — never used for users."""


def random_user_voice(rng: np.random.Generator, variants: tuple[str, ...]) -> Voice:
    return Voice(
        accent=ACCENTS[int(rng.integers(len(ACCENTS)))],
        variant=variants[int(rng.integers(len(variants)))],
        rate_wpm=int(rng.integers(130, 211)),
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(30, 91)),
    )


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class EspeakError(RuntimeError):
    pass


class Espeak:
    """The process-wide synthesiser (the C library holds global state, so there is exactly one)."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as err:
            message = f"cannot load the espeak-ng library ({err}); install the Debian package espeak-ng"
            raise EspeakError(message) from err
        self.sample_rate = int(self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT))
        if self.sample_rate <= 0:
            raise EspeakError("espeak_Initialize failed")
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._words: list[tuple[int, int, int]] = []  # (text position, length, audio position in ms)
        self._callback = _Callback(self._on_audio)  # keep a reference: the library calls it later
        self._lib.espeak_SetSynthCallback(self._callback)
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def loaded(cls) -> bool:
        """Whether this process has initialised the library (and so carries synthesis state)."""
        return cls._instance is not None

    def seed(self, seed: int) -> None:
        """Seed libc ``rand`` (espeak-ng's breath/aspiration noise)."""
        self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            if e.type == _EVENT_WORD and e.length > 0:
                self._words.append((e.text_position, e.length, e.audio_position))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice) -> tuple[npt.NDArray[np.int16], list[tuple[int, int, int]]]:
        """Render ``text``; returns 22050 Hz samples and word events (char position, length, ms)."""
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise EspeakError(f"unknown espeak-ng voice {voice.name!r}")
        for param, value in (
            (_PARAM_RATE, voice.rate_wpm),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_VOLUME, _VOLUME),
            (_PARAM_WORDGAP, 0),
        ):
            self._lib.espeak_SetParameter(param, value, 0)
        self._chunks, self._words = [], []
        data = text.encode()
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _PHONEMES, None, None)
        self._lib.espeak_Synchronize()
        if err != 0:
            raise EspeakError(f"espeak_Synth failed ({err}) for {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples, list(self._words)


@dataclass(frozen=True)
class Word:
    """A word and where it starts/ends, in samples relative to the start of its rendering."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Rendering:
    """16 kHz float audio trimmed to its first and last audible sample, and its word timings."""

    text: str
    samples: FloatArray
    words: tuple[Word, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


TRIM_BELOW_RMS_DB = 40.0
"""Leading/trailing samples quieter than (utterance RMS - 40 dB) are trimmed: the rendering then starts and
ends on audible speech, so event times measured from it are the real speech boundaries."""


def render(
    text: str, voice: UserVoice, fir: FloatArray | None = None, spoken: str | None = None, level_dbfs: float = -26.0
) -> Rendering:
    """Synthesise, resample to 16 kHz, optionally EQ, trim silence and normalise to ``level_dbfs`` RMS.

    ``spoken`` overrides what espeak is given (e.g. phonemes for "mm-hm") while ``text`` is recorded.
    """
    raw, rate, events = voice.synthesize(spoken or text)
    x = resample(raw, rate, SAMPLE_RATE)
    offset = 0
    if fir is not None:
        x, offset = apply_fir(x, fir), len(fir) // 2
    level = rms(x)
    if level == 0.0:
        raise EspeakError(f"{voice.name} rendered silence for {text!r}")
    audible = np.flatnonzero(np.abs(x) > level * 10 ** (-TRIM_BELOW_RMS_DB / 20))
    lo, hi = int(audible[0]), int(audible[-1]) + 1
    x = x[lo:hi]
    x = x * np.float32(10 ** (level_dbfs / 20) / rms(x))
    return Rendering(text, x.astype(np.float32), _words(spoken is None, text, events, offset - lo, len(x)))


WORD_PATTERN = re.compile(r"[A-Za-z0-9']+")


def _words(aligned: bool, text: str, events: list[tuple[int, int, int]], shift: int, n: int) -> tuple[Word, ...]:
    """Every word of ``text`` with its time span in trimmed samples (an engine without word events, Flite,
    gets the whole rendering split in proportion to word length).

    espeak-ng reports where words start, but not for every word: it voices some pairs as one unit
    ("in the", "that the") and reports only the first. Such words share their unit's span, split in
    proportion to their length; a word ends where the next one starts.
    """
    tokens = [(m.start() + 1, m.end() + 1, m.group()) for m in WORD_PATTERN.finditer(text)]
    if not aligned or not tokens:
        return (Word(text, 0, n),)
    anchors: dict[int, int] = {}
    for pos, _, ms in events:
        k = next((i for i, (a, b, _) in enumerate(tokens) if pos < b), len(tokens) - 1)
        anchors.setdefault(k, min(max(ms * SAMPLE_RATE // 1000 + shift, 0), n))
    anchors.setdefault(0, 0)
    keys = sorted(anchors)
    words: list[Word] = []
    for g, k in enumerate(keys):
        group = tokens[k : keys[g + 1] if g + 1 < len(keys) else len(tokens)]
        start = anchors[k]
        end = max(anchors[keys[g + 1]] if g + 1 < len(keys) else n, start)
        weights = np.cumsum([0] + [len(t) + 1 for _, _, t in group])
        bounds = start + (end - start) * weights // weights[-1]
        words += [Word(t, int(bounds[i]), int(bounds[i + 1])) for i, (_, _, t) in enumerate(group)]
    return tuple(words)
