"""Action-count evaluation: the model offline over a corpus split (its video fed per chunk, as the engine
feeds it), and the cascade peer, both scored by ``actions.py``.

Time base. Offline, the model's output for input frame f is heard one chunk late (as ``evaluate.run_model``
places its audio), so its text of frame f is placed at ``f * frame + chunk``, as for TimeSpeak.

The cascade peer is a turn-based system: it answers once, when the question's turn ends (silero-vad's end of
turn on the microphone track after the question starts, or the end of the typed question), with the number
of motion bursts it counted in the frames shown until then, written as digits ("7."). It knows nothing of
which shape is the actor: per pair of consecutive frames it counts the pixels whose colour changed by more
than ``CHANGE`` in some channel; a pair is *busy* when that count exceeds the clip's median pair by
``max(MIN_EXCESS, median / 2)``; busy pairs separated by at most one quiet pair are one burst. The drifting
distractor keeps the median up and its bounces and overlaps add bursts of their own, which is what a
frame-difference counter gets wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .actions import ActionCountMetrics, QuestionScore, metrics, questions, score_question
from .codec import Codec
from .data import Conversation
from .model import DuplexModel
from .timespeak import Utterance
from .timespeak_eval import said_offline

SAMPLE_RATE = 16_000
CHANGE = 24
MIN_EXCESS = 6


def action_conversations(convs: Sequence[Conversation]) -> list[Conversation]:
    """The conversations with a count question."""
    return [c for c in convs if any(e["type"] == "count_question" for e in c.events)]


def score_actions(
    system: str, convs: Sequence[Conversation], said: Sequence[Sequence[Utterance]]
) -> ActionCountMetrics:
    """Score every count question of ``convs`` against what the system said."""
    scores: list[QuestionScore] = []
    for conv, mine in zip(convs, said, strict=True):
        scores += [score_question(q, mine) for q in questions(conv.events)]
    return metrics(system, len(convs), scores)


def evaluate_offline(
    model: DuplexModel, codec: Codec, convs: list[Conversation], chunk_ms: int = 200, batch_invariant: bool = False
) -> ActionCountMetrics:
    """Step the conversations through the model (video and typed text fed as the engine feeds them) and score
    them."""
    from .evaluate import stream_model

    _, texts = stream_model(model, codec, convs, chunk_ms, batch_invariant)
    return score_actions("duplex", convs, [said_offline(t, model.cfg, chunk_ms / 1000) for t in texts])


def motion_bursts(frames: npt.NDArray[np.uint8]) -> int:
    """Bursts of motion in (K, H, W, 3) frames, by the frame-difference rule of the module doc."""
    if len(frames) < 2:
        return 0
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=3)
    changed = (diff > CHANGE).reshape(len(diff), -1).sum(axis=1)
    median = float(np.median(changed))
    busy = changed > median + max(MIN_EXCESS, median / 2)
    bursts, quiet = 0, 2
    for b in busy:
        if b:
            bursts += quiet > 1
            quiet = 0
        else:
            quiet += 1
    return bursts


def cascade_answer_time(conv: Conversation, vad_ends: Sequence[int]) -> float | None:
    """When the cascade answers: the end of the typed question, or silero-vad's first end of turn after the
    spoken question starts (None: it never fired)."""
    q = questions(conv.events)[0]
    if q.channel == "typed":
        return q.end
    return next((at / SAMPLE_RATE for at in sorted(vad_ends) if at / SAMPLE_RATE > q.start), None)


def cascade_said(conv: Conversation, at: float | None, period_s: float) -> list[Utterance]:
    """The cascade's answer: the motion bursts in the frames shown before ``at``, in digits."""
    if at is None or conv.video is None:
        return []
    shown = conv.video[: int(at / period_s) + 1].numpy()
    return [Utterance(at, f"{motion_bursts(shown)}.")]


def run_cascade(convs: list[Conversation]) -> ActionCountMetrics:
    """Score the cascade peer on ``convs`` (silero-vad over each user track)."""
    from .evaluate import vad_events

    ends = [[at for kind, at in events if kind == "end"] for events in vad_events(convs)]
    said = []
    for c, e in zip(convs, ends, strict=True):
        period = next(float(v["frame_period_s"]) for v in c.events if v["type"] == "video")
        said.append(cascade_said(c, cascade_answer_time(c, e), period))
    return score_actions("cascade (VAD + frame-difference counter)", convs, said)
