"""TimeSpeak scoring: did the model say WORD at every due moment of a timed request, and nothing else?

Pure functions on labels and timelines, no model: a request (a ``timed_request`` event of ``duplex corpus make
--task timespeak``) is **correct** when every one of its due moments has an utterance of the right WORD within
±``TOLERANCE_S`` of it, and no other single-word TimeSpeak utterance falls in the request's window (from the
request's start to the next request's start, or the conversation's end: a word after "stop" is an extra).
No partial credit. Accuracy = correct requests / requests.

An **utterance** is a stretch of the model's text stream: bytes until an end of text (EOT), or until the
stream has been silent for more than ``GAP_S``; it is placed at its first byte. Only utterances that are
exactly one word of ``WORDS`` (case and punctuation ignored) take part, so the model's ordinary replies
("It opens at nine.") and acknowledgements ("Okay.") do not count as extras.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .scoring import accuracy_by

WORDS = ("now", "go", "left", "right", "breathe", "up", "down", "red", "blue", "green", "jump", "turn")
"""The words a timed request asks for."""
TOLERANCE_S = 0.5
GAP_S = 0.5
"""A pause in the text stream longer than this ends an utterance (as an EOT does)."""
_WORD = re.compile(r"[a-z]+")

Piece = tuple[float, bytes, bool]
"""(time in seconds on the conversation's axis, text bytes, ends the text): one frame or one text delta."""


@dataclass(frozen=True)
class Utterance:
    t: float
    """Seconds, at its first byte."""
    text: str

    @property
    def word(self) -> str | None:
        """The TimeSpeak word this utterance is, if it is exactly one of ``WORDS``."""
        words = _WORD.findall(self.text.lower())
        return words[0] if len(words) == 1 and words[0] in WORDS else None


def utterances(pieces: Iterable[Piece], gap_s: float = GAP_S) -> list[Utterance]:
    """Split a text stream (pieces in time order) into utterances."""
    out: list[Utterance] = []
    start: float | None = None
    last = 0.0
    data = bytearray()

    def close() -> None:
        nonlocal start
        if start is not None and data.strip():
            out.append(Utterance(round(start, 6), data.decode("utf-8", "replace").strip()))
        start = None
        data.clear()

    for t, chunk, final in pieces:
        if chunk:
            if start is not None and t - last > gap_s:
                close()
            if start is None:
                start = t
            data.extend(chunk)
            last = t
        if final:
            close()
    close()
    return out


def frame_pieces(
    tokens: Sequence[int],
    frame_s: float,
    offset_s: float,
    pad: int = 256,
    eot: int = 257,
    words: Mapping[int, str] | None = None,
) -> list[Piece]:
    """The model's per-frame text tokens (bytes, PAD, EOT, and the word tokens ``words`` maps to their words:
    ``ModelConfig.word_tokens``) as pieces: frame f at ``offset_s + f * frame_s``."""
    words = words or {}

    def text(v: int) -> bytes:
        return bytes([v]) if v < pad else words[v].encode() if v in words else b""

    return [(offset_s + f * frame_s, text(v), v == eot) for f, v in enumerate(tokens) if v != pad]


def timeline_pieces(timeline: dict[str, Any]) -> list[Piece]:
    """A ``duplex talk --timeline`` document's text deltas as pieces, each at its arrival time."""
    return [
        (float(e["t"]), e["text"].get("text", "").encode(), bool(e["text"].get("final", False)))
        for e in timeline["events"]
        if "text" in e
    ]


@dataclass(frozen=True)
class Request:
    """A timed request as labelled: its due moments and the window its words are judged in (seconds)."""

    index: int
    word: str
    form: str
    n: int
    channel: str
    start: float
    end: float
    due: tuple[float, ...]
    stop: float | None
    window_end: float

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> Request:
        return cls(
            int(e["request"]),
            str(e["word"]),
            str(e["form"]),
            int(e["n"]),
            str(e["channel"]),
            float(e["start"]),
            float(e["end"]),
            tuple(float(d) for d in e["due"]),
            None if e.get("stop") is None else float(e["stop"]),
            float(e["window_end"]),
        )


def requests(events: Iterable[dict[str, Any]]) -> list[Request]:
    """The timed requests of a conversation's events, in order."""
    return sorted((Request.from_event(e) for e in events if e["type"] == "timed_request"), key=lambda r: r.start)


_NUMBERS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
}  # fmt: skip
_REQUEST = re.compile(r"say (\w+) (in|every) ([\w-]+) seconds", re.IGNORECASE)


def parse_request(text: str, end: float, until: float, stop: float | None = None, start: float = 0.0) -> Request:
    """A request from its words ("Say now every three seconds.", N in digits or words up to thirty), the time
    it ended and ``until``, the end of the window it is judged in; an "every" request is due every N s after
    ``end`` before ``stop`` (or ``until``). ValueError naming what is wrong."""
    m = _REQUEST.search(text)
    if m is None:
        raise ValueError(f"{text!r} is not 'Say WORD in|every N seconds.'")
    word, form, number = m.group(1).lower(), m.group(2).lower(), m.group(3).lower()
    if word not in WORDS:
        raise ValueError(f"{word!r} is not a TimeSpeak word ({', '.join(WORDS)})")
    tens, _, ones = number.partition("-")
    n = int(number) if number.isdigit() else _NUMBERS.get(tens, 0) + (_NUMBERS.get(ones, 0) if ones else 0)
    words_ok = number.isdigit() or (tens in _NUMBERS and (not ones or ones in _NUMBERS))
    if not words_ok or not 2 <= n <= 30:
        raise ValueError(f"{number!r} is not a number of seconds from 2 to 30")
    last = until if stop is None else stop
    due = (end + n,) if form == "in" else tuple(end + k * n for k in range(1, int((last - end) // n) + 1))
    due = tuple(round(d, 6) for d in due if d < last or form == "in")
    return Request(0, word, "once" if form == "in" else "every", n, "spoken", start, end, due, stop, until)


@dataclass(frozen=True)
class RequestScore:
    request: Request
    hits: int
    """Due moments with the right word within the tolerance."""
    wrong: int
    """Due moments whose nearest utterance within the tolerance is another word."""
    missing: int
    """Due moments with no TimeSpeak utterance within the tolerance."""
    extra: int
    """TimeSpeak utterances in the window matched to no due moment (early, late, repeated, after stop)."""
    errors: tuple[float, ...]
    """Utterance time minus due time of each hit."""

    @property
    def correct(self) -> bool:
        return self.hits == len(self.request.due) and self.extra == 0


def score_request(req: Request, said: Sequence[Utterance], tolerance_s: float = TOLERANCE_S) -> RequestScore:
    """Match the request's due moments, in order, to the TimeSpeak utterances in its window: the nearest one of
    the right word within the tolerance, else the nearest one of any word (a wrong word)."""
    inside = [u for u in said if req.start <= u.t < req.window_end and u.word is not None]
    used: set[int] = set()
    hits = wrong = missing = 0
    errors = []
    for d in req.due:
        near = [i for i, u in enumerate(inside) if i not in used and abs(u.t - d) <= tolerance_s]
        right = [i for i in near if inside[i].word == req.word]
        pool = right or near
        if not pool:
            missing += 1
            continue
        best = min(pool, key=lambda i: abs(inside[i].t - d))
        used.add(best)
        if right:
            hits += 1
            errors.append(round(inside[best].t - d, 6))
        else:
            wrong += 1
    return RequestScore(req, hits, wrong, missing, len(inside) - len(used), tuple(errors))


@dataclass
class TimeSpeakMetrics:
    system: str
    conversations: int
    requests: int
    correct: int
    accuracy: float
    due: int
    hits: int
    wrong: int
    missing: int
    extra: int
    timing_error_abs_p50: float | None
    timing_error_abs_p95: float | None
    timing_error_mean: float | None
    """Signed mean of (utterance - due) over hits: negative = early."""
    by_form: dict[str, dict[str, float]]
    by_n: dict[str, dict[str, float]]
    by_channel: dict[str, dict[str, float]]
    audio_at_due: float | None
    """Share of due moments with a model speech onset (output audio, speech detector) within the tolerance."""
    errors: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = dict(vars(self))
        d.pop("errors")
        return d


def audio_hits(due: Sequence[float], onsets: Sequence[float], tolerance_s: float = TOLERANCE_S) -> int:
    """How many due moments have a speech onset within the tolerance."""
    return sum(any(abs(a - d) <= tolerance_s for a in onsets) for d in due)


def metrics(
    system: str, conversations: int, scores: Sequence[RequestScore], audio_due_hits: int | None = None
) -> TimeSpeakMetrics:
    """The figures of a set of request scores (``audio_due_hits``: from ``audio_hits``, None when not scored)."""
    errors = [e for s in scores for e in s.errors]
    absolute = [abs(e) for e in errors]
    due = sum(len(s.request.due) for s in scores)
    correct = sum(s.correct for s in scores)
    return TimeSpeakMetrics(
        system=system,
        conversations=conversations,
        requests=len(scores),
        due=due,
        correct=correct,
        accuracy=correct / len(scores) if scores else 0.0,
        hits=sum(s.hits for s in scores),
        wrong=sum(s.wrong for s in scores),
        missing=sum(s.missing for s in scores),
        extra=sum(s.extra for s in scores),
        timing_error_abs_p50=float(np.percentile(absolute, 50)) if absolute else None,
        timing_error_abs_p95=float(np.percentile(absolute, 95)) if absolute else None,
        timing_error_mean=statistics.fmean(errors) if errors else None,
        by_form=accuracy_by(((s.request.form, s.correct) for s in scores), "requests"),
        by_n=accuracy_by(((s.request.n, s.correct) for s in scores), "requests"),
        by_channel=accuracy_by(((s.request.channel, s.correct) for s in scores), "requests"),
        audio_at_due=None if audio_due_hits is None or not due else audio_due_hits / due,
        errors=errors,
    )
