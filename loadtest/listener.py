"""What a live listener hears, measured from one conversation's event timeline (pure: no I/O, no clock).

Two clocks meet here, both the client's own, in seconds on the *capture axis*: 0 is the instant the
microphone began capturing the user's first chunk.

* Sending follows a live microphone (``SendSchedule``): chunk k is handed over only once its chunk_ms have
  been captured, so it leaves at capture start + (k+1)·chunk. The user's end of speech is a capture time
  (a sample position of the scripted user track), never a send time.
* Hearing follows a player without a jitter buffer (``Listener``): model chunk k starts playing when it
  arrives, or when the previous chunk has finished playing, whichever is later (the rule of the shared
  client's output track). Frame f of a chunk plays ``f`` frames after the chunk starts.

From those, per conversation:

* turn-taking latency: the first model speech frame heard after the user's end of turn − that end (onsets up
  to ``EARLY_ONSET_S`` before the end count as 0, as in the offline evaluation); no onset before the user
  speaks again or within ``TURN_WINDOW_S`` → a missed turn;
* barge-in latency: the user starts speaking while model speech is being heard → the first frame heard
  without model speech, minus that start; still talking after ``BARGE_IN_MAX_S`` → an ignored barge-in;
* back-channels: a run of back-channel frames while the model does not hold the floor.

A frame is model speech when its floor control is SPEAK, or BACKCHANNEL inside a model turn — the rule of
the engine's turn tracker (``serving/engine/turns.py``), so these events agree with the server's.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from duplex.serving.client import CaptureAxis
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_LISTEN, FLOOR_SPEAK

TURN_WINDOW_S = 3.0
"""A reply heard later than this after the user's end of turn is not counted as taking that turn."""
EARLY_ONSET_S = 0.2
"""An onset heard up to this long before the user's end of turn counts as taking it (latency 0)."""
BARGE_IN_MAX_S = 2.0
"""Model speech still heard this long after the user started over it: the barge-in was ignored."""

MeasurementKind = Literal["turn", "turn_missed", "barge_in", "barge_in_ignored", "backchannel"]


@dataclass(frozen=True)
class Measurement:
    """One thing a listener noticed."""

    kind: MeasurementKind
    at_s: float
    """Capture-axis time of the user's act it answers (end of turn, start of the barge-in) or of the
    back-channel's onset."""
    value_s: float = 0.0
    """Latency in seconds (``turn``, ``barge_in``); 0 for the other kinds."""


@dataclass
class SendSchedule(CaptureAxis):
    """When a live microphone hands chunk k over, on the client's clock (microseconds, any epoch): the shared
    client's capture axis (``start_us`` = the instant capture of chunk 0 began, sample 0 of the user track),
    re-aims included."""

    @classmethod
    def from_hint(cls, send_0_us: int | None, ready_us: int, chunk_ms: int) -> SendSchedule:
        """Chunk 0 leaves at ``send_0_us`` (the server's phase hint on this clock: ``first_send_us``), or when
        the SessionReady arrived (``ready_us``) without one, and its capture began one chunk earlier — the
        shared client's rule (``serving/client.py``)."""
        chunk_us = chunk_ms * 1000
        return cls((ready_us if send_0_us is None else send_0_us) - chunk_us, chunk_us)

    def axis_s(self, t_us: int) -> float:
        """Client time → seconds on the capture axis."""
        return self.axis_us(t_us) / 1e6


@dataclass(frozen=True)
class Script:
    """The scripted user's acts on the capture axis (seconds), from a corpus conversation's labels."""

    turn_ends: tuple[float, ...]
    """End of the user's last speech sample of each turn (``user_turn_end``)."""
    speech_starts: tuple[float, ...]
    """Start of every user clause (``user_speech``): a barge-in when model speech is heard then."""

    def __post_init__(self) -> None:
        if list(self.turn_ends) != sorted(self.turn_ends) or list(self.speech_starts) != sorted(self.speech_starts):
            raise ValueError("Script: turn_ends and speech_starts must be sorted")

    def next_start_after(self, t: float) -> float:
        i = bisect.bisect_right(self.speech_starts, t)
        return self.speech_starts[i] if i < len(self.speech_starts) else float("inf")


@dataclass
class Listener:
    """Incremental: feed each model chunk as it arrives; get the measurements it completes."""

    script: Script
    chunk_s: float
    play_cursor_s: float = float("-inf")
    """Capture-axis time at which the chunk played last finishes."""
    speaking: bool = False
    """Model speech is being heard (a model turn holds the floor)."""
    in_backchannel: bool = False
    last_onset_s: float = float("-inf")
    pending_turn: float | None = None
    """The user's end of turn waiting for the model's reply."""
    pending_barge_in: float | None = None
    """The user's onset over model speech, waiting for the speech to stop."""
    _next_end: int = 0
    _next_start: int = 0
    _out: list[Measurement] = field(default_factory=list)

    def feed(self, arrival_s: float, controls: Sequence[int]) -> list[Measurement]:
        """One model chunk arrived at ``arrival_s`` (capture axis) with its per-frame floor controls."""
        start = max(arrival_s, self.play_cursor_s)
        self.play_cursor_s = start + self.chunk_s
        frames = list(controls) or [FLOOR_LISTEN]
        frame_s = self.chunk_s / len(frames)
        for f, c in enumerate(frames):
            self._frame(start + f * frame_s, c)
        out, self._out = self._out, []
        return out

    def flush(self, now_s: float) -> list[Measurement]:
        """The stream ended at ``now_s``: close what is decided by then (a reply window that has passed)."""
        self._advance(now_s)
        out, self._out = self._out, []
        return out

    # ----- internals --------------------------------------------------------------------------------
    def _frame(self, t: float, control: int) -> None:
        self._advance(t)
        speech = control == FLOOR_SPEAK or (control == FLOOR_BACKCHANNEL and self.speaking)
        if speech and not self.speaking:
            self.speaking, self.in_backchannel, self.last_onset_s = True, False, t
            if self.pending_turn is not None:
                self._out.append(Measurement("turn", self.pending_turn, max(0.0, t - self.pending_turn)))
                self.pending_turn = None
        elif not speech and self.speaking:
            self.speaking = False
            if self.pending_barge_in is not None:
                self._out.append(Measurement("barge_in", self.pending_barge_in, t - self.pending_barge_in))
                self.pending_barge_in = None
        if control == FLOOR_BACKCHANNEL and not self.speaking:
            if not self.in_backchannel:
                self._out.append(Measurement("backchannel", t))
            self.in_backchannel = True
        elif not speech:
            self.in_backchannel = False

    def _advance(self, t: float) -> None:
        """Everything the script and the deadlines decide up to time ``t`` (before the frame at ``t``)."""
        while True:
            end = self.script.turn_ends[self._next_end] if self._next_end < len(self.script.turn_ends) else None
            begin = (
                self.script.speech_starts[self._next_start]
                if self._next_start < len(self.script.speech_starts)
                else None
            )
            deadline = self._turn_deadline()
            barge_deadline = (
                self.pending_barge_in + BARGE_IN_MAX_S if self.pending_barge_in is not None else float("inf")
            )
            due = min(x for x in (end, begin, deadline, barge_deadline) if x is not None)
            if due > t:
                return
            if due == deadline:
                assert self.pending_turn is not None
                self._out.append(Measurement("turn_missed", self.pending_turn))
                self.pending_turn = None
            elif due == barge_deadline:
                assert self.pending_barge_in is not None
                self._out.append(Measurement("barge_in_ignored", self.pending_barge_in))
                self.pending_barge_in = None
            elif due == begin:
                self._next_start += 1
                if self.speaking and self.pending_barge_in is None:
                    self.pending_barge_in = begin
            else:
                assert end is not None
                self._next_end += 1
                if self.speaking and self.last_onset_s >= end - EARLY_ONSET_S:
                    self._out.append(Measurement("turn", end, 0.0))  # the reply began just before the end
                elif not self.speaking:
                    self.pending_turn = end
                # else: the model talked through the user's end of turn, a turn it never took; the overlap
                # shows as a barge-in at the user's next onset if the model is still talking then

    def _turn_deadline(self) -> float:
        if self.pending_turn is None:
            return float("inf")
        return min(self.pending_turn + TURN_WINDOW_S, self.script.next_start_after(self.pending_turn))
