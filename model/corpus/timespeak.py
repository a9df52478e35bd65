"""TimeSpeak conversations: timed requests ("Say go in three seconds.", "Say left every four seconds." … "Stop.")
spoken by the user or typed on the text channel, inside ordinary turn-taking.

The target model acknowledges a request ("Okay."), then says WORD — on its text stream and in its voice —
exactly at each due moment (N s after the request ends; every N s until the user says or types "stop") and
nothing in between. The due moments are labelled in a ``timed_request`` event, so a scorer needs only
``events.json``. Ordinary exchanges (user turn, model reply, back-channels, barge-ins) come before and after a
request and, where they fit, between its due moments; nothing else of the model overlaps a due moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from duplex.model.corpus import textgen
from duplex.model.corpus.audio import SAMPLE_RATE
from duplex.model.corpus.conversation import _Builder, _s, _span, _words
from duplex.model.corpus.tts import render
from duplex.model.timespeak import WORDS, Utterance

SHORT_N = tuple(range(2, 10))
LONG_N = (10, 12, 15, 20, 25, 30)
P_LONG = 0.12
"""Share of requests with a delay or period from ``LONG_N`` instead of 2–9 s."""
P_EVERY = 0.5
P_TYPED = 0.35
"""Share of requests (and, independently, of stops) typed on the text channel instead of spoken."""
EVERY_REPEATS = (2, 5)
"""An "every" request is stopped after this many (inclusive range) due moments (2 when N is long)."""
TEXT_SLOTS = 4
"""Typed bytes per 40 ms frame (``ModelConfig.text_in_slots``): a typed text of B bytes takes ceil(B/4) frames."""
FRAME = 640
CHUNK = 5 * FRAME
"""Typed text starts on a 200 ms chunk boundary, where the engine feeds a chunk's queued text."""
ACKS = ("Okay.", "Sure.", "Got it.", "Will do.")
SPOKEN_STOPS = ("Stop.", "Okay, stop.", "Please stop.", "You can stop.")
TYPED_STOP = "stop"
Form = Literal["once", "every"]
Channel = Literal["spoken", "typed"]


@dataclass(frozen=True)
class Request:
    """One timed request: say ``word`` ``n`` s after it ends (once), or every ``n`` s until "stop"."""

    word: str
    form: Form
    n: int
    channel: Channel

    def text(self) -> str:
        """What the user says (N in words) or types (N in digits)."""
        n = str(self.n) if self.channel == "typed" else textgen.number_words(self.n)
        return f"Say {self.word} {'in' if self.form == 'once' else 'every'} {n} seconds."


def draw_request(rng: np.random.Generator, max_n: int = LONG_N[-1]) -> Request:
    """A random request; N at most ``max_n`` (from 2)."""
    word = WORDS[int(rng.integers(len(WORDS)))]
    form: Form = "every" if rng.random() < P_EVERY else "once"
    long_n = tuple(n for n in LONG_N if n <= max_n)
    pool = long_n if rng.random() < P_LONG and long_n else tuple(n for n in SHORT_N if n <= max_n)
    n = int(pool[int(rng.integers(len(pool)))])
    channel: Channel = "typed" if rng.random() < P_TYPED else "spoken"
    return Request(word, form, n, channel)


def typed_frames(text: str) -> int:
    """Frames the text channel takes to deliver ``text`` (``TEXT_SLOTS`` bytes per frame)."""
    return math.ceil(len(text.encode()) / TEXT_SLOTS)


class TimeSpeakBuilder(_Builder):
    """``_Builder`` with timed requests between ordinary exchanges (one conversation of ``--task timespeak``)."""

    requests: list[dict[str, Any]]

    def script(self) -> int:
        self.requests = []
        target = self.target = _s(self.u((self.spec.min_duration_s, self.spec.max_duration_s)))
        t = _s(self.u((0.3, 1.2)))
        if self.rng.random() < 0.4:
            end, _ = self.model_turn(t, textgen.greeting(self.rng), None, False, None, allow_barge=False)
            t = end + _s(self.u(self.timing.user_gap))
        t = self.exchanges(t, int(self.rng.integers(0, 2)))
        while True:
            t = self.timed_request(t)
            if t >= target - _s(4.0):
                break
            t = self.exchanges(t, int(self.rng.integers(0, 3)))
            if t >= target - _s(4.0):
                break
        n = t + _s(self.u((0.5, 1.5)))
        for k, req in enumerate(self.requests):
            req["window_end"] = (
                self.requests[k + 1]["start"] if k + 1 < len(self.requests) else round(n / SAMPLE_RATE, 6)
            )
        return n

    # ----- ordinary turn-taking ---------------------------------------------------------------------
    def model_turn(
        self, at: int, text: str, reply_to: int | None, question: bool, user_turn_end: int | None, allow_barge: bool
    ) -> tuple[int, int | None]:
        """A reply that is one TimeSpeak word alone ("Right.") becomes "I see.": a timed word is then always
        a timed word, on the text stream as in the scorer."""
        if Utterance(0.0, text).word is not None:
            text = "I see."
        return super().model_turn(at, text, reply_to, question, user_turn_end, allow_barge)

    def exchanges(self, t: int, count: int) -> int:
        """``count`` user turns and their replies from ``t`` (a barge-in adds the turn it starts); returns when
        the user may speak next."""
        barge, done = False, 0
        while done < count or barge:
            turn_end, script = self.user_turn(t, barge, max_clauses=3)
            reply_at = max(turn_end + _s(self.u(self.timing.reply_gap)), self.model_free + _s(0.05))
            model_end, onset = self.model_turn(
                reply_at, script.reply, self.turn, script.is_question, turn_end, allow_barge=True
            )
            self.turn += 1
            done += 1
            if onset is not None:
                t, barge = onset, True
                continue
            barge = False
            t = model_end + self.gap(model_end)
        return t

    def gap(self, at: int) -> int:
        """Samples before the user speaks again: a short gap, or (sometimes) a labelled silence."""
        if self.rng.random() < self.timing.p_silence:
            gap = _s(self.u(self.timing.silence))
            self.events.append(_span("silence", at, at + gap))
            return gap
        return _s(self.u(self.timing.user_gap))

    def fill(self, t: int, until: int) -> int:
        """Ordinary one-clause exchanges from ``t`` that end (model reply included) 0.3 s before ``until``;
        an exchange that would not fit is taken back. Returns the end of what was kept (or ``t``)."""
        while self.rng.random() < 0.6:
            mark = (len(self.user.pieces), len(self.model.pieces), len(self.events), self.model_free, self.turn)
            mark_turns = self.model_turns
            turn_end, script = self.user_turn(t, False, max_clauses=1)
            reply_at = max(turn_end + _s(self.u(self.timing.reply_gap)), self.model_free + _s(0.05))
            model_end, _ = self.model_turn(reply_at, script.reply, self.turn, script.is_question, turn_end, False)
            self.turn += 1
            if model_end > until - _s(0.3):
                del self.user.pieces[mark[0] :], self.model.pieces[mark[1] :], self.events[mark[2] :]
                self.model_free, self.turn, self.model_turns = mark[3], mark[4], mark_turns
                break
            t = model_end + _s(self.u(self.timing.user_gap))
        return t

    # ----- the timed request --------------------------------------------------------------------------
    def user_line(self, at: int, text: str, channel: Channel) -> tuple[int, int, int | None]:
        """The user says ``text`` (a one-clause turn) or types it (from the next chunk boundary):
        (start, end, turn index or None when typed)."""
        if channel == "typed":
            start = -(-at // CHUNK) * CHUNK
            end = start + typed_frames(text) * FRAME
            self.events.append(_span("typed_text", start, end, text=text))
            return start, end, None
        r = render(text, self.voice, self.fir, level_dbfs=self.user_level + self.u((-2.0, 2.0)))
        end = at + len(r.samples)
        self.user.place(at, r.samples)
        turn = self.turn
        self.events.append(
            _span("user_speech", at, end, turn=turn, clause=0, text=text, cue="final", words=_words(r, at))
        )
        self.events.append(_span("user_turn", at, end, turn=turn, text=text, question=False, barge_in=False, clauses=1))
        self.events.append(_span("user_turn_end", end, end, turn=turn))
        self.turn += 1
        return at, end, turn

    def acknowledge(self, end: int, turn: int | None) -> int:
        """The model's short acknowledgement after a request or a stop; returns its end."""
        at = max(end + _s(self.u(self.timing.reply_gap)), self.model_free + _s(0.05))
        ack = ACKS[int(self.rng.integers(len(ACKS)))]
        model_end, _ = self.model_turn(at, ack, turn, False, end if turn is not None else None, allow_barge=False)
        self.events[-1]["kind"] = "acknowledgement"
        return model_end

    def say_word(self, due: int, word: str, request: int) -> int:
        r = self.say_model(word)
        self.model.place(due, r.samples)
        end = due + len(r.samples)
        self.events.append(_span("timed_word", due, end, request=request, word=word, words=_words(r, due)))
        self.model_free = end
        return end

    def timed_request(self, t: int) -> int:
        """Place one request, its acknowledgement, its words (and its stop); returns when the user may speak."""
        req = draw_request(self.rng, self.spec.timed_max_n)
        index = len(self.requests)
        start, end, turn = self.user_line(t, req.text(), req.channel)
        cursor = self.acknowledge(end, turn)
        period = _s(req.n)
        repeats = 1
        if req.form == "every":
            lo, hi = EVERY_REPEATS
            repeats = 2 if req.n in LONG_N else int(self.rng.integers(lo, hi + 1))
        dues = [end + k * period for k in range(1, repeats + 1)]
        for due in dues:
            cursor = self.fill(cursor + _s(self.u(self.timing.user_gap)), due) if due - cursor > _s(4.0) else cursor
            cursor = self.say_word(due, req.word, index)
        doc: dict[str, Any] = _span(
            "timed_request",
            start,
            end,
            request=index,
            word=req.word,
            form=req.form,
            n=req.n,
            channel=req.channel,
            text=req.text(),
            due=[round(d / SAMPLE_RATE, 6) for d in dues],
            stop=None,
            stop_channel=None,
        )
        if req.form == "every":
            stop_channel: Channel = "typed" if self.rng.random() < P_TYPED else "spoken"
            onset = dues[-1] + _s(self.u((0.6, req.n - 1.0)))
            text = TYPED_STOP if stop_channel == "typed" else SPOKEN_STOPS[int(self.rng.integers(len(SPOKEN_STOPS)))]
            stop_start, stop_end, stop_turn = self.user_line(onset, text, stop_channel)
            doc |= {"stop": round(stop_start / SAMPLE_RATE, 6), "stop_channel": stop_channel}
            cursor = self.acknowledge(stop_end, stop_turn)
        self.events.append(doc)
        self.requests.append(doc)
        return cursor + _s(self.u(self.timing.user_gap))
