"""``evaluate.score``: each figure from the events it is defined on, on a hand-built conversation whose model
track is tones at known places; and on corpus conversations, the tally of a split is the tallies of its
conversations."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import make_corpus
from duplex.model.data import Conversation, load_split
from duplex.model.evaluate import score, turn_latencies, turn_latency

SR = 16000


def tone(track: npt.NDArray[np.float32], start: float, end: float) -> None:
    """A 200 Hz tone at -26 dBFS over [start, end) s: speech to the detector."""
    a, b = round(start * SR), round(end * SR)
    track[a:b] = (0.07 * np.sin(2 * np.pi * 200 * np.arange(b - a) / SR)).astype(np.float32)


def hand_built() -> tuple[Conversation, npt.NDArray[np.float32]]:
    """10 s: the user speaks 0-2 s (turn 0) and the model answers at 2.3 s for 1.2 s; the user speaks again
    3.8-6 s with a pause at 4.0-4.6 in which the model back-channels 4.1-4.4; the model answers at 7 s, the
    user barges in at 7.5 s (turn 2), and the model talks on to 9 s."""
    events: list[dict[str, Any]] = [
        {"type": "user_speech", "start": 0.0, "end": 2.0, "turn": 0},
        {"type": "user_turn_end", "start": 2.0},
        {"type": "user_speech", "start": 3.8, "end": 6.0, "turn": 1},
        {"type": "pause", "start": 4.0, "end": 4.6},
        {"type": "backchannel", "start": 4.0, "end": 4.5},
        {"type": "user_turn_end", "start": 6.0},
        {"type": "user_speech", "start": 7.5, "end": 9.5, "turn": 2},
        {"type": "barge_in", "user_onset": 7.5, "user_turn": 2, "model_stop": 7.7},
    ]
    model = np.zeros(10 * SR, np.float32)
    for a, b in ((2.3, 3.5), (4.1, 4.4), (7.0, 9.0)):
        tone(model, a, b)
    user = torch.zeros(10 * SR)
    return Conversation("hand", "test", user, torch.from_numpy(model), events), model


def test_each_figure_comes_from_its_events() -> None:
    conv, model = hand_built()
    m = score("tones", [conv], [model])
    # the first turn is taken 0.3 s after its end, the second 1.0 s after (the user barges in on that answer)
    assert (m.turns, m.tor, m.latencies) == (2, 1.0, [pytest.approx(0.3), pytest.approx(1.0)])
    assert turn_latencies(conv, model) == m.latencies
    # a 0.3 s burst in the pause: an onset and a back-channel, not a take-over
    assert (m.pauses, m.false_takeover, m.pause_onsets, m.backchannel_rate) == (1, 0.0, 1.0, 1.0)
    # the barge-in: the model stops 1.5 s after the user's onset, more than two chunks
    assert (m.barge_ins, m.barge_ins_evaluated, m.barge_in_stop_p50, m.barge_in_within_chunk) == (
        1,
        1,
        pytest.approx(1.5),
        0.0,
    )
    # overlap over the clauses outside barge-ins (turns 0 and 1: 4.2 s), of which the burst covers 0.3 s
    assert m.overlap == pytest.approx(0.3 / 4.2, abs=0.01)
    assert m.interrupts_user == 0.0


def test_a_turn_is_taken_only_inside_its_window() -> None:
    starts = [0.0, 5.0]
    assert turn_latency(2.0, [(1.9, 3.0)], starts) == 0.0  # just before the end counts, at 0
    assert turn_latency(2.0, [(1.7, 3.0)], starts) is None  # too early: it was talking through the end
    assert turn_latency(2.0, [(4.9, 6.0)], starts) == pytest.approx(2.9)
    assert turn_latency(2.0, [(5.2, 6.0)], [0.0, 4.0]) is None  # the user spoke again first
    assert turn_latency(2.0, [(1.0, 1.5), (2.4, 3.0), (2.6, 3.0)], starts) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def convs(tmp_path_factory: pytest.TempPathFactory) -> list[Conversation]:
    corpus = tmp_path_factory.mktemp("corpus")
    make_corpus(
        corpus,
        4,
        seed=7,  # every kind of event: turn ends, pauses, a back-channel, a barge-in
        workers=2,
        min_duration_s=14,
        max_duration_s=18,
        validation_fraction=0.0,
        test_fraction=0.75,
        heldout_fraction=0.0,
        timing=Timing(reply_gap=(0.0, 0.08), barge_reaction=(0.06, 0.12)),
    )
    convs: list[Conversation] = load_split(corpus, "test")
    return convs


def test_a_split_is_the_sum_of_its_conversations(convs: list[Conversation]) -> None:
    outs = [c.model.numpy() for c in convs]
    whole = score("oracle", convs, outs)
    one = [score("oracle", [c], [o]) for c, o in zip(convs, outs, strict=True)]
    assert whole.turns == sum(m.turns for m in one) and whole.pauses == sum(m.pauses for m in one)
    assert whole.latencies == [x for m in one for x in m.latencies]
    assert whole.barge_ins_evaluated == sum(m.barge_ins_evaluated for m in one) > 0
