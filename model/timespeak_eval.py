"""TimeSpeak evaluation: the model offline over a corpus split, a live server's record, and the cascade peer,
all scored by ``timespeak.py``.

Time base. Offline, the model's output for input frame f is heard one chunk late (as ``evaluate.run_model``
places its audio), so the text of frame f is placed at ``f * frame + chunk``. Live, a text delta is placed
where the model audio chunk of the same ``seq`` was heard (``Conversation.placements``). Either way the
model is judged on when a listener would get the word.

The cascade peer is a turn-based system with an ideal recogniser and language model but no timer: it speaks
only when a user turn ends (silero-vad's end of turn on the microphone track, or a typed text's arrival),
and then says WORD if a due moment of the running request lies within the tolerance, else nothing a scorer
would count. It knows every request's word and due times (from the labels), so what it misses, it misses for
want of a timer alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .codec import Codec
from .config import ModelConfig
from .data import Conversation
from .detect import speech_segments
from .model import DuplexModel
from .timespeak import (
    TOLERANCE_S,
    RequestScore,
    TimeSpeakMetrics,
    Utterance,
    audio_hits,
    frame_pieces,
    metrics,
    requests,
    score_request,
    utterances,
)

SAMPLE_RATE = 16_000


def timed_conversations(convs: Sequence[Conversation]) -> list[Conversation]:
    """The conversations with at least one timed request (a timespeak corpus may mix in ordinary ones)."""
    return [c for c in convs if any(e["type"] == "timed_request" for e in c.events)]


def score_timespeak(
    system: str,
    convs: Sequence[Conversation],
    said: Sequence[Sequence[Utterance]],
    tracks: Sequence[npt.NDArray[np.float32]] | None = None,
) -> TimeSpeakMetrics:
    """Score every timed request of ``convs`` against what the system said (and, given ``tracks``, whether its
    audio starts speaking at each due moment)."""
    scores: list[RequestScore] = []
    on_time = 0
    for k, (conv, mine) in enumerate(zip(convs, said, strict=True)):
        reqs = requests(conv.events)
        scores += [score_request(r, mine) for r in reqs]
        if tracks is not None:
            onsets = [a for a, _ in speech_segments(tracks[k])]
            on_time += sum(audio_hits(r.due, onsets) for r in reqs)
    return metrics(system, len(convs), scores, on_time if tracks is not None else None)


def said_offline(tokens: npt.NDArray[np.int64], cfg: ModelConfig, chunk_s: float) -> list[Utterance]:
    """The utterances of a ``cfg`` model's per-frame text tokens (word tokens read as their words), each frame
    heard one chunk late."""
    frame_s = cfg.frame_ms / 1000
    pieces = frame_pieces([int(v) for v in tokens], frame_s, chunk_s, cfg.pad_token, cfg.eot_token, cfg.word_tokens)
    return utterances(pieces)


def evaluate_offline(
    model: DuplexModel, codec: Codec, convs: list[Conversation], chunk_ms: int = 200, batch_invariant: bool = False
) -> TimeSpeakMetrics:
    """Step the conversations through the model (typed text fed as the engine feeds it) and score them."""
    from .evaluate import stream_model

    tracks, texts = stream_model(model, codec, convs, chunk_ms, batch_invariant)
    said = [said_offline(t, model.cfg, chunk_ms / 1000) for t in texts]
    return score_timespeak("duplex", convs, said, tracks)


def oracle_said(conv: Conversation) -> list[Utterance]:
    """The target model's text stream as utterances (the labels' words: an upper bound of the scorer)."""
    out = []
    for e in conv.events:
        if e["type"] in ("model_turn", "timed_word") and e.get("words"):
            out.append(Utterance(float(e["words"][0]["start"]), " ".join(w["word"] for w in e["words"])))
    return out


def cascade_turn_ends(conv: Conversation, vad_ends: Sequence[int]) -> list[float]:
    """When a turn-based system may speak: silero-vad's ends of turn and the end of every typed text."""
    typed = [float(e["end"]) for e in conv.events if e["type"] == "typed_text"]
    return sorted([s / SAMPLE_RATE for s in vad_ends] + typed)


def cascade_said(conv: Conversation, turn_ends: Sequence[float], tolerance_s: float = TOLERANCE_S) -> list[Utterance]:
    """The timer-free cascade: at each end of turn, WORD if a due moment of the running request is within the
    tolerance (it cannot speak at any other moment), else its acknowledgement."""
    out = []
    reqs = requests(conv.events)
    for t in turn_ends:
        running = [r for r in reqs if r.start <= t < r.window_end]
        due = [r for r in running if any(abs(d - t) <= tolerance_s for d in r.due)]
        out.append(Utterance(t, due[0].word if due else "Okay."))
    return out


def run_cascade(convs: list[Conversation]) -> TimeSpeakMetrics:
    """Score the cascade peer on ``convs`` (silero-vad over each user track)."""
    from .evaluate import vad_events

    ends = [[at for kind, at in events if kind == "end"] for events in vad_events(convs)]
    said = [cascade_said(c, cascade_turn_ends(c, e)) for c, e in zip(convs, ends, strict=True)]
    return score_timespeak("cascade (VAD + turn-based, no timer)", convs, said)
