"""Action-count scoring: did the model answer "How many times did it jump?" with exactly the right count?

Pure functions on labels and timelines, no model. A question (a ``count_question`` event of ``duplex corpus
make --task action-count``) is **correct** when the model's first utterance that starts at or after the
question's end, and at most ``WINDOW_S`` after it, contains exactly one number (digits, or a number word
from zero to twenty, or a multiple of ten up to ninety, "twenty-one" spelled either way) and that number is
the count. No answer in the window, two numbers ("seven, no, eight"), or the wrong one: not correct.
Accuracy = correct questions / questions, also by kind, by count and by channel.

Utterances are those of the TimeSpeak scorer (``timespeak.utterances``): a stretch of the model's text stream
until an end of text or a pause of more than 0.5 s, placed at its first byte.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .scoring import accuracy_by
from .timespeak import Utterance

WINDOW_S = 5.0
"""The answer must start within this many seconds of the question's end."""
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_TOKEN = re.compile(r"\d+|[a-z]+")


def numbers(text: str) -> list[int]:
    """Every number in ``text``, in order: digits, or number words ("twenty one" / "twenty-one" is one)."""
    out: list[int] = []
    tens: int | None = None
    for token in _TOKEN.findall(text.lower()):
        if token.isdigit():
            value: int | None = int(token)
        elif token in _TENS:
            value = _TENS[token]
        elif token in _UNITS:
            value = _UNITS.index(token)
        else:
            value = None
        if tens is not None and value is not None and 0 < value < 10 and not token.isdigit():
            out[-1] = tens + value
            tens = None
            continue
        tens = value if token in _TENS else None
        if value is not None:
            out.append(value)
    return out


@dataclass(frozen=True)
class Question:
    """A count question as labelled (seconds on the conversation's axis)."""

    kind: str
    count: int
    channel: str
    start: float
    end: float

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> Question:
        return cls(str(e["kind"]), int(e["count"]), str(e["channel"]), float(e["start"]), float(e["end"]))


def questions(events: Iterable[dict[str, Any]]) -> list[Question]:
    """The count questions of a conversation's events, in order."""
    return sorted((Question.from_event(e) for e in events if e["type"] == "count_question"), key=lambda q: q.start)


@dataclass(frozen=True)
class QuestionScore:
    question: Question
    answer: str | None
    """The utterance judged (None: nothing was said in the window)."""
    said: tuple[int, ...]
    """The numbers in it."""
    latency: float | None
    """The answer's start minus the question's end."""

    @property
    def correct(self) -> bool:
        return self.said == (self.question.count,)


def score_question(q: Question, said: Sequence[Utterance], window_s: float = WINDOW_S) -> QuestionScore:
    """Judge the first utterance in [question end, question end + window]."""
    after = sorted((u for u in said if q.end <= u.t <= q.end + window_s), key=lambda u: u.t)
    if not after:
        return QuestionScore(q, None, (), None)
    first = after[0]
    return QuestionScore(q, first.text, tuple(numbers(first.text)), round(first.t - q.end, 6))


@dataclass
class ActionCountMetrics:
    system: str
    conversations: int
    questions: int
    correct: int
    accuracy: float
    answered: int
    """Questions with an utterance in the window (right or wrong)."""
    off_by_one: int
    """Answers of a single number one away from the count."""
    latency_p50: float | None
    by_kind: dict[str, dict[str, float]]
    by_count: dict[str, dict[str, float]]
    by_channel: dict[str, dict[str, float]]

    def summary(self) -> dict[str, Any]:
        return dict(vars(self))


def metrics(system: str, conversations: int, scores: Sequence[QuestionScore]) -> ActionCountMetrics:
    """The figures of a set of question scores."""
    correct = sum(s.correct for s in scores)
    latencies = sorted(s.latency for s in scores if s.latency is not None)
    return ActionCountMetrics(
        system=system,
        conversations=conversations,
        questions=len(scores),
        correct=correct,
        accuracy=correct / len(scores) if scores else 0.0,
        answered=sum(s.answer is not None for s in scores),
        off_by_one=sum(len(s.said) == 1 and abs(s.said[0] - s.question.count) == 1 for s in scores),
        latency_p50=statistics.median(latencies) if latencies else None,
        by_kind=accuracy_by(((s.question.kind, s.correct) for s in scores), "questions"),
        by_count=accuracy_by(((s.question.count, s.correct) for s in scores), "questions"),
        by_channel=accuracy_by(((s.question.channel, s.correct) for s in scores), "questions"),
    )
