"""The TimeSpeak scorer on hand-built timelines: right word on time, early or late by more than 0.5 s, wrong
word, an extra utterance, a missing one, repeats after stop; utterances from frame tokens and from a ``duplex
talk`` timeline; the diagnostics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.timespeak import (
    Request,
    Utterance,
    audio_hits,
    frame_pieces,
    metrics,
    parse_request,
    requests,
    score_request,
    timeline_pieces,
    utterances,
)

PAD, EOT = 256, 257


def every_go() -> Request:
    """ "Say go every 3 seconds." ending at 2.0 s, due at 5, 8, 11; stop said at 12 s; window to 20 s."""
    return Request(0, "go", "every", 3, "spoken", 0.5, 2.0, (5.0, 8.0, 11.0), 12.0, 20.0)


def once_left() -> Request:
    return Request(1, "left", "once", 4, "typed", 1.0, 1.25, (5.25,), None, 10.0)


def said(*pairs: tuple[float, str]) -> list[Utterance]:
    return [Utterance(t, text) for t, text in pairs]


def test_right_word_on_time_is_correct_with_its_timing_errors() -> None:
    s = score_request(every_go(), said((5.2, "go"), (7.6, "Go."), (11.45, "go")))
    assert (s.correct, s.hits, s.wrong, s.missing, s.extra) == (True, 3, 0, 0, 0)
    assert s.errors == (pytest.approx(0.2), pytest.approx(-0.4), pytest.approx(0.45))


@pytest.mark.parametrize("t", [5.76, 4.74, 6.0, 4.0])
def test_early_or_late_by_more_than_half_a_second_is_missing_and_extra(t: float) -> None:
    s = score_request(once_left(), said((t, "left")))
    assert (s.correct, s.hits, s.missing, s.extra) == (False, 0, 1, 1)


def test_exactly_half_a_second_off_still_counts() -> None:
    assert score_request(once_left(), said((5.75, "left"))).correct


def test_wrong_word_at_the_due_moment() -> None:
    s = score_request(once_left(), said((5.25, "right")))
    assert (s.correct, s.hits, s.wrong, s.missing, s.extra) == (False, 0, 1, 0, 0)


def test_the_right_word_wins_over_a_nearer_wrong_one() -> None:
    s = score_request(once_left(), said((5.25, "right"), (5.5, "left")))
    assert (s.hits, s.wrong, s.extra, s.correct) == (1, 0, 1, False)  # the wrong word is then an extra


def test_an_extra_utterance_in_between_takes_the_credit_away() -> None:
    s = score_request(every_go(), said((5.0, "go"), (6.5, "go"), (8.0, "go"), (11.0, "go")))
    assert (s.hits, s.extra, s.correct) == (3, 1, False)


def test_a_missing_due_moment() -> None:
    s = score_request(every_go(), said((5.0, "go"), (11.0, "go")))
    assert (s.hits, s.missing, s.extra, s.correct) == (2, 1, 0, False)


def test_repeats_after_stop_are_extras() -> None:
    s = score_request(every_go(), said((5.0, "go"), (8.0, "go"), (11.0, "go"), (14.0, "go"), (17.0, "go")))
    assert (s.hits, s.extra, s.correct) == (3, 2, False)


def test_ordinary_replies_and_utterances_outside_the_window_do_not_count() -> None:
    talk = said((0.2, "go"), (3.0, "Okay."), (6.0, "It opens at nine, go left."), (5.0, "go"), (8.0, "go"))
    s = score_request(every_go(), [*talk, Utterance(11.0, "go"), Utterance(20.0, "go")])
    assert (s.correct, s.extra) == (True, 0)  # 0.2 s is before the request starts, 20.0 s is the next window's


def test_utterances_end_at_eot_or_after_a_silent_half_second() -> None:
    frame = 0.04
    tokens = [PAD] * 10 + list(b"go") + [EOT] + [PAD] * 5 + list(b"Okay") + [PAD] * 13 + list(b"up")
    got = utterances(frame_pieces(tokens, frame, 0.2))
    assert [(u.text, u.word) for u in got] == [("go", "go"), ("Okay", None), ("up", "up")]
    assert [u.t for u in got] == [
        pytest.approx(0.2 + 10 * frame),
        pytest.approx(0.2 + 18 * frame),
        pytest.approx(0.2 + 35 * frame),
    ]
    # a pause shorter than GAP_S inside a word keeps it one utterance ("go" + "go" would be two words)
    assert [u.text for u in utterances(frame_pieces(list(b"le") + [PAD] * 3 + list(b"ft"), frame, 0.0))] == ["left"]


def test_timeline_text_deltas_become_utterances() -> None:
    timeline: dict[str, Any] = {
        "events": [
            {"t": 0.4, "audio": {"seq": "1"}},
            {"t": 3.2, "text": {"seq": "15", "text": "no"}},
            {"t": 3.4, "text": {"seq": "16", "text": "w", "final": True}},
            {"t": 6.2, "text": {"seq": "30", "text": "now"}},
            {"t": 6.4, "text": {"seq": "31", "final": True}},
        ]
    }
    got = utterances(timeline_pieces(timeline))
    assert [(u.t, u.word) for u in got] == [(3.2, "now"), (6.2, "now")]


def test_requests_are_read_from_the_labels() -> None:
    event = {
        "type": "timed_request",
        "request": 0,
        "word": "go",
        "form": "every",
        "n": 3,
        "channel": "spoken",
        "start": 0.5,
        "end": 2.0,
        "due": [5.0, 8.0, 11.0],
        "stop": 12.0,
        "window_end": 20.0,
    }
    assert requests([{"type": "user_turn", "start": 0.0}, event]) == [every_go()]


def test_metrics_give_accuracy_without_partial_credit_and_the_diagnostics() -> None:
    scores = [
        score_request(every_go(), said((5.1, "go"), (8.3, "go"), (11.0, "go"))),  # correct
        score_request(every_go(), said((5.0, "go"), (8.0, "go"))),  # one missing: no credit
        score_request(once_left(), said((5.0, "left"))),  # correct
        score_request(once_left(), said((5.25, "left"), (8.0, "left"))),  # an extra: no credit
    ]
    m = metrics("hand", 2, scores, audio_due_hits=4)
    assert (m.requests, m.correct, m.accuracy, m.due, m.hits, m.missing, m.extra) == (4, 2, 0.5, 8, 7, 1, 1)
    assert m.by_form == {"every": {"requests": 2, "accuracy": 0.5}, "once": {"requests": 2, "accuracy": 0.5}}
    assert m.by_n == {"3": {"requests": 2, "accuracy": 0.5}, "4": {"requests": 2, "accuracy": 0.5}}
    assert m.by_channel == {"spoken": {"requests": 2, "accuracy": 0.5}, "typed": {"requests": 2, "accuracy": 0.5}}
    assert m.errors == pytest.approx([0.1, 0.3, 0.0, 0.0, 0.0, -0.25, 0.0])
    assert m.timing_error_abs_p50 == pytest.approx(0.0)
    assert m.timing_error_mean == pytest.approx(0.15 / 7)
    assert m.audio_at_due == 0.5


def test_audio_hits_count_onsets_within_the_tolerance() -> None:
    assert audio_hits([5.0, 8.0, 11.0], [4.6, 8.6, 20.0]) == 1


def test_a_request_is_parsed_from_its_words_with_n_in_digits_or_words() -> None:
    every = parse_request("Say now every three seconds.", end=2.84, until=22.0, stop=15.74)
    assert (every.word, every.form, every.n) == ("now", "every", 3)
    assert every.due == pytest.approx((5.84, 8.84, 11.84, 14.84))  # none due after the stop
    once = parse_request("say GO in 25 seconds", end=1.0, until=40.0)
    assert (once.word, once.form, once.due) == ("go", "once", (26.0,))
    assert parse_request("Say up in twenty-five seconds.", 0.0, 30.0).n == 25
    for bad, named in (("Say nope in 3 seconds.", "not a TimeSpeak word"), ("Say up in one seconds.", "2 to 30"),
                       ("Say up in 31 seconds.", "2 to 30"), ("Say up soon.", "is not 'Say WORD")):  # fmt: skip
        with pytest.raises(ValueError, match=named):
            parse_request(bad, 1.0, 10.0)


def test_cli_scores_a_talk_timeline(tmp_path: Path) -> None:
    timeline = tmp_path / "t.json"
    deltas = [(5.9, "now", True), (8.7, "now", True), (11.0, "now", True), (15.0, "now", True)]
    events = [{"t": t, "text": {"seq": str(int(t * 5)), "text": x, "final": f}} for t, x, f in deltas]
    timeline.write_text(json.dumps({"events": [{"t": 0.2, "audio": {"seq": "0"}}, *events]}))
    args = [
        "model",
        "timespeak-score",
        "--timeline",
        str(timeline),
        "--end",
        "2.84",
        "--json",
        str(tmp_path / "s.json"),
    ]
    result = CliRunner().invoke(app, [*args, "--request", "Say now every three seconds.", "--stop", "13.0"])
    assert result.exit_code == 0, result.output
    # due at 5.84, 8.84, 11.84: the word at 11.0 is 0.84 s early (so 11.84 is missing), it and the one after
    # the stop are extras
    assert "not correct: 2 on time, 0 wrong word, 1 missing, 2 extra" in result.output
    assert json.loads((tmp_path / "s.json").read_text())["correct"] is False
    bad = CliRunner().invoke(app, [*args, "--request", "Say later in 3 seconds."])
    assert bad.exit_code == 2 and "--request" in bad.output and "not a TimeSpeak word" in " ".join(bad.output.split())
