"""Action-count conversations: a video clip beside the audio, a shape that jumps, blinks or turns 4–10 times,
and at the end the user asks (spoken or typed) "How many times did it jump?"; the model answers the count.

The clip runs on the conversation's time axis, ONE 32×32 RGB frame per 200 ms chunk (frame k is shown from
k × 0.2 s, the engine's layout of one ``VideoFrame`` per audio chunk), saved as ``video.npy`` (uint8,
(K, 32, 32, 3), K = the conversation's chunks). An actor shape (square, circle or triangle, with a small
marker so a turn is visible on a circle too) in random colours on a plain or noisy background performs ONE
kind of action, 4–10 times; a distractor shape drifts and bounces the whole time and never performs it.
Actions start and end on frame boundaries (the clip cannot show finer times): a jump lifts the actor a few
pixels and back over 0.4–0.6 s, a blink hides or dims it for 0.2–0.4 s, a turn spins it once about its
vertical axis over 0.4–0.6 s; gaps between actions are 0.6–2.5 s. Ordinary exchanges go on while the
clip plays; after the last action the user asks, and the target model answers the count ("Seven.", a
``model_turn`` with ``kind: count_answer``) in its voice and on its text stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from duplex.model.corpus import textgen
from duplex.model.corpus.audio import SAMPLE_RATE
from duplex.model.corpus.conversation import _s, _span
from duplex.model.corpus.timespeak import CHUNK, P_TYPED, Channel, TimeSpeakBuilder

Kind = Literal["jump", "blink", "turn"]
KINDS: tuple[Kind, ...] = ("jump", "blink", "turn")
SHAPES = ("square", "circle", "triangle")
SIZE = 32
"""Side of a frame, pixels (``ModelConfig.video_size`` of the reference model)."""
PERIOD_S = 0.2
"""Seconds each frame is shown: one frame per 200 ms chunk."""
VIDEO_FILE = "video.npy"
COUNTS = (4, 10)
"""Repetitions per clip (inclusive)."""
DURATION_FRAMES: dict[str, tuple[int, int]] = {"jump": (2, 3), "blink": (1, 2), "turn": (2, 3)}
"""Frames an action lasts (inclusive): 0.4–0.6 s for a jump or a turn, 0.2–0.4 s for a blink."""
GAP_FRAMES = (3, 12)
"""Frames between one action's end and the next one's start (inclusive): 0.6–2.4 s."""
LEAD_FRAMES = (3, 10)
"""Frames before the first action."""
Frames = npt.NDArray[np.uint8]


def question_text(kind: str) -> str:
    """What the user asks (the same words spoken or typed)."""
    return f"How many times did it {kind}?"


def answer_text(count: int) -> str:
    """The target model's answer: the count in words ("Seven.")."""
    return textgen.number_words(count).capitalize() + "."


@dataclass(frozen=True)
class Actor:
    """A drawn shape: where it is (centre, pixels), its half-size and colours."""

    shape: str
    x: float
    y: float
    r: float
    colour: tuple[int, int, int]
    marker: tuple[int, int, int]


@dataclass(frozen=True)
class Clip:
    """One clip's script: the actor, the distractor, its background, and its actions as frame ranges."""

    kind: Kind
    actor: Actor
    distractor: Actor
    velocity: tuple[float, float]
    background: Frames
    """(SIZE, SIZE, 3) uint8."""
    actions: tuple[tuple[int, int], ...]
    """(first frame, end frame exclusive) of each repetition."""
    jump_px: int
    dim: float
    """A blink's opacity of the actor: 0 = gone."""
    surge: float
    """The distractor's speed swings by this share of its mean speed ..."""
    surge_frames: float
    """... with this period (frames): it speeds up and slows down, but never stops or jumps."""


def _colour(rng: np.random.Generator, away_from: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """A random colour at least 120 (sum of channel differences) from each of ``away_from``."""
    while True:
        c = rng.integers(0, 256, 3).astype(np.float64)
        if all(np.abs(c - a).sum() >= 120 for a in away_from):
            return c


def draw_clip(rng: np.random.Generator, kind: Kind, count: int) -> Clip:
    """A random clip script with ``count`` repetitions of ``kind``."""
    base = rng.integers(0, 256, 3).astype(np.float64)
    background = np.broadcast_to(base, (SIZE, SIZE, 3)).copy()
    if rng.random() < 0.5:
        background += rng.normal(0.0, 18.0, (SIZE, SIZE, 3))
    actor_c = _colour(rng, [base])
    marker_c = _colour(rng, [actor_c])
    other_c = _colour(rng, [base, actor_c])
    shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), 2)]
    r = float(rng.uniform(3.5, 5.0))
    actor = Actor(shapes[0], float(rng.uniform(8, 24)), float(rng.uniform(13, 25)), r, _rgb(actor_c), _rgb(marker_c))
    other = Actor(
        shapes[1],
        float(rng.uniform(5, 27)),
        float(rng.uniform(5, 27)),
        float(rng.uniform(3.0, 4.5)),
        _rgb(other_c),
        _rgb(other_c),
    )
    speed, angle = float(rng.uniform(0.8, 2.0)), float(rng.uniform(0, 2 * math.pi))
    actions, at = [], int(rng.integers(LEAD_FRAMES[0], LEAD_FRAMES[1] + 1))
    lo, hi = DURATION_FRAMES[kind]
    for _ in range(count):
        length = int(rng.integers(lo, hi + 1))
        actions.append((at, at + length))
        at += length + int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1))
    return Clip(
        kind,
        actor,
        other,
        (speed * math.cos(angle), speed * math.sin(angle)),
        np.clip(background, 0, 255).astype(np.uint8),
        tuple(actions),
        int(rng.integers(3, 6)),
        float(rng.choice([0.0, 0.25])),
        float(rng.uniform(0.3, 0.9)),
        float(rng.uniform(10, 30)),
    )


def _rgb(c: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


_YS, _XS = np.mgrid[0:SIZE, 0:SIZE] + 0.5


def _paint(frame: npt.NDArray[np.float64], a: Actor, dy: float = 0.0, sx: float = 1.0, alpha: float = 1.0) -> None:
    """Draw ``a`` onto ``frame`` (in place), lifted by ``dy`` pixels and squeezed horizontally by ``sx``
    (negative = mirrored: the marker moves to the other side), with opacity ``alpha``."""
    scale = math.copysign(max(abs(sx), 0.15), sx)
    u = (_XS - a.x) / (a.r * scale)
    v = (_YS - (a.y - dy)) / a.r
    if a.shape == "square":
        body = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    elif a.shape == "circle":
        body = u**2 + v**2 <= 1
    else:  # a triangle pointing up
        body = (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    mark = body & (u >= 0.15) & (u <= 0.75) & (v >= 0.0) & (v <= 0.6)
    for mask, colour in ((body & ~mark, a.colour), (mark, a.marker)):
        frame[mask] = (1 - alpha) * frame[mask] + alpha * np.asarray(colour, np.float64)


def render_clip(clip: Clip, frames: int) -> Frames:
    """The clip's ``frames`` frames, (K, SIZE, SIZE, 3) uint8: frame k as shown from k × ``PERIOD_S``."""
    out = np.empty((frames, SIZE, SIZE, 3), np.uint8)
    x, y = clip.distractor.x, clip.distractor.y
    vx, vy = clip.velocity
    low, high = clip.distractor.r, SIZE - clip.distractor.r
    for k in range(frames):
        frame = clip.background.astype(np.float64)
        _paint(frame, replace(clip.distractor, x=x, y=y))
        dy, sx, alpha = 0.0, 1.0, 1.0
        for a, b in clip.actions:
            if a <= k < b:
                phase = (k - a + 0.5) / (b - a)
                if clip.kind == "jump":
                    dy = max(1.0, round(clip.jump_px * math.sin(math.pi * phase)))
                elif clip.kind == "blink":
                    alpha = clip.dim
                else:
                    sx = math.cos(2 * math.pi * phase)
        _paint(frame, clip.actor, dy, sx, alpha)
        out[k] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        pace = 1.0 + clip.surge * math.sin(2 * math.pi * k / clip.surge_frames)
        x, y = x + vx * pace, y + vy * pace
        if not low <= x <= high:
            vx, x = -vx, min(max(x, low), high)
        if not low <= y <= high:
            vy, y = -vy, min(max(y, low), high)
    return out


class ActionCountBuilder(TimeSpeakBuilder):
    """``_Builder`` for one ``--task action-count`` conversation: ordinary exchanges while the clip plays, the
    count question after its last action, the model's answer."""

    clip: Clip

    def script(self) -> int:
        self.requests = []
        video_rng = np.random.default_rng([self.spec.corpus_seed, 5, self.spec.index])
        kind = KINDS[int(video_rng.integers(len(KINDS)))]
        count = int(video_rng.integers(COUNTS[0], COUNTS[1] + 1))
        self.clip = draw_clip(video_rng, kind, count)
        last = _s(self.clip.actions[-1][1] * PERIOD_S)
        t = _s(self.u((0.3, 1.2)))
        while True:  # one-clause exchanges while the clip plays, with silences between them
            after = self.fill(t, last)
            if after == t and last - t <= _s(4.0):
                break
            t = after if after != t else t + _s(self.u((1.0, 3.0)))
        for n, (a, b) in enumerate(self.clip.actions):
            self.events.append(_span("action", _s(a * PERIOD_S), _s(b * PERIOD_S), kind=kind, repetition=n))
        channel: Channel = "typed" if self.rng.random() < P_TYPED else "spoken"
        text = question_text(kind)
        at = max(t, self.model_free + _s(0.1), last + _s(self.u((0.3, 1.0))))
        start, end, turn = self.user_line(at, text, channel)
        reply_at = max(end + _s(self.u(self.timing.reply_gap)), self.model_free + _s(0.05))
        answer_end, _ = self.model_turn(
            reply_at, answer_text(count), turn, True, end if turn is not None else None, False
        )
        self.events[-1] |= {"kind": "count_answer", "count": count}
        self.events.append(
            _span("count_question", start, end, kind=kind, count=count, channel=channel, text=text, turn=turn)
        )
        n = answer_end + _s(self.u((0.5, 1.5)))
        frames = -(-n // CHUNK)
        self.events.append(
            _span(
                "video",
                0,
                n,
                path=VIDEO_FILE,
                frame_period_s=PERIOD_S,
                frames=frames,
                size=SIZE,
                actor={
                    "shape": self.clip.actor.shape,
                    "x": round(self.clip.actor.x, 3),
                    "y": round(self.clip.actor.y, 3),
                    "r": round(self.clip.actor.r, 3),
                },
                distractor=self.clip.distractor.shape,
            )
        )
        return n

    def video(self, n: int) -> Frames:
        return render_clip(self.clip, -(-n // CHUNK))


def video_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The conversation's ``video`` event, if it has one."""
    return next((e for e in events if e["type"] == "video"), None)


def _box_changes(video: Frames, actor: dict[str, Any], a: int, b: int) -> bool:
    """Whether the actor's neighbourhood in frames [a, b) differs from the frame before ``a`` (at rest)."""
    r = float(actor["r"]) + 6
    x0, x1 = max(0, int(actor["x"] - r)), min(SIZE, int(actor["x"] + r) + 1)
    y0, y1 = max(0, int(actor["y"] - r)), min(SIZE, int(actor["y"] + r) + 1)
    rest = video[a - 1, y0:y1, x0:x1].astype(np.int32)
    return any(int(np.abs(video[k, y0:y1, x0:x1].astype(np.int32) - rest).max()) > 0 for k in range(a, b))


def _read_video(directory: Path, video: dict[str, Any], num_samples: int) -> Frames | str:
    """The clip's frames, or what is wrong with the file: unreadable, or not one uint8 frame per chunk."""
    try:
        frames = np.load(directory / video["path"], allow_pickle=False)
    except (OSError, ValueError) as err:
        return f"{video['path']}: cannot be read ({err})"
    want = (-(-num_samples // CHUNK), SIZE, SIZE, 3)
    if frames.dtype != np.uint8 or frames.shape != want or video["frames"] != want[0]:
        return f"{video['path']}: {frames.dtype} {frames.shape}, want uint8 {want}"
    return cast(Frames, frames)


def check_actions(directory: Path, doc: dict[str, Any]) -> list[str]:
    """Every disagreement of an action-count conversation's labels with each other and with ``video.npy``:
    the video's shape, the actions (one kind, on frame boundaries, their lengths and gaps, the actor moving
    in each), the question (after the last action, its count = the actions) and the model's answer."""
    events = doc["events"]
    questions = [e for e in events if e["type"] == "count_question"]
    actions = sorted((e for e in events if e["type"] == "action"), key=lambda e: int(e["start_sample"]))
    video = video_event(events)
    if not questions and not actions and video is None:
        return []
    if video is None or len(questions) != 1:
        return [f"an action-count conversation needs one video and one count_question event, has {len(questions)}"]
    q, problems = questions[0], []
    frames = _read_video(directory, video, int(doc["num_samples"]))
    if isinstance(frames, str):
        return [frames]
    if not COUNTS[0] <= q["count"] <= COUNTS[1] or q["count"] != len(actions):
        problems.append(
            f"count_question: count {q['count']}, but {len(actions)} actions (want {COUNTS[0]}..{COUNTS[1]})"
        )
    if q["kind"] not in DURATION_FRAMES:
        return [*problems, f"count_question: kind {q['kind']!r}, not one of {', '.join(DURATION_FRAMES)}"]
    problems += _action_problems(actions, q, frames, video["actor"])
    answers = [e for e in events if e["type"] == "model_turn" and e.get("kind") == "count_answer"]
    if len(answers) != 1 or answers[0]["start"] < q["end"] or answers[0]["text"] != answer_text(q["count"]):
        problems.append(
            f"count_question at {q['start']:.3f}s: not answered once, after it, with {answer_text(q['count'])!r}"
        )
    return problems


def _action_problems(
    actions: list[dict[str, Any]], q: dict[str, Any], frames: Frames, actor: dict[str, Any]
) -> list[str]:
    """Each action's disagreements: its kind and length on frame boundaries, its gap to the one before, its end
    before the question, and the actor changing in the video while it lasts."""
    problems: list[str] = []
    lo, hi = DURATION_FRAMES[q["kind"]]
    previous_end = 0
    for e in actions:
        a, b = int(e["start_sample"]), int(e["end_sample"])
        where = f"action at {a / SAMPLE_RATE:.3f}s"
        if e["kind"] != q["kind"] or a % CHUNK or b % CHUNK or not lo <= (b - a) // CHUNK <= hi:
            problems.append(f"{where}: {e['kind']} of {(b - a) / SAMPLE_RATE:.3f}s, not a {q['kind']} on frames")
            continue
        if previous_end and not GAP_FRAMES[0] <= (a - previous_end) // CHUNK <= GAP_FRAMES[1]:
            problems.append(f"{where}: {(a - previous_end) / SAMPLE_RATE:.3f}s after the previous one")
        if b > q["start_sample"]:
            problems.append(f"{where}: does not end before the question")
        if not _box_changes(frames, actor, a // CHUNK, b // CHUNK):
            problems.append(f"{where}: the actor does not change in the video")
        previous_end = b
    return problems
