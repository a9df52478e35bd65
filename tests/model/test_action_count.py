"""``duplex corpus make --task action-count``: clips beside the audio, the count question spoken or typed and the
model's answer, their labels against the video and audio, determinism; loading the video and feeding it as the
engine does; the scorer, the cascade peer's motion counter and ``duplex model eval --task action-count``.

One tiny corpus (6 conversations) is rendered once per module; seed 3 was picked because it holds all three
action kinds and both channels, which the tests assert."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from duplex.cli import app
from duplex.model.actions import Question, numbers, score_question
from duplex.model.actions_eval import (
    action_conversations,
    cascade_answer_time,
    cascade_said,
    motion_bursts,
    run_cascade,
    score_actions,
)
from duplex.model.codec import Codec
from duplex.model.config import ModelConfig
from duplex.model.corpus import check_conversation, make_corpus
from duplex.model.corpus.actions import KINDS, PERIOD_S, answer_text, draw_clip, render_clip
from duplex.model.corpus.make import ACTION_EVENT_TYPES
from duplex.model.data import Conversation, load_conversation, video_input
from duplex.model.evaluate import stream_model
from duplex.model.model import DuplexModel
from duplex.model.timespeak import Utterance
from duplex.model.timespeak_eval import oracle_said

SEED = 3
SR = 16000
runner = CliRunner()
CliError = Callable[[list[str], str], None]
EvalWithPeers = Callable[[list[str], Path], tuple[dict[str, Any], dict[str, dict[str, Any]]]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("actions") / "c"
    make_corpus(out, 6, seed=SEED, task="action-count", heldout_fraction=0.0)
    return out


def _ids(corpus: Path) -> list[str]:
    return [c["path"] for c in json.loads((corpus / "manifest.json").read_text())["conversations"]]


def _doc(corpus: Path, cid: str) -> dict[str, Any]:
    return dict(json.loads((corpus / cid / "events.json").read_text()))


def test_each_conversation_has_a_clip_one_action_kind_and_a_count_question(corpus: Path) -> None:
    seen = set()
    for cid in _ids(corpus):
        doc = _doc(corpus, cid)
        events = doc["events"]
        (q,) = [e for e in events if e["type"] == "count_question"]
        actions = [e for e in events if e["type"] == "action"]
        assert len(actions) == q["count"] and 4 <= q["count"] <= 10
        assert {a["kind"] for a in actions} == {q["kind"]} and all(a["end"] <= q["start"] for a in actions)
        assert q["text"] == f"How many times did it {q['kind']}?"
        (answer,) = [e for e in events if e.get("kind") == "count_answer"]
        assert answer["type"] == "model_turn" and answer["text"] == answer_text(q["count"])
        assert answer["start"] >= q["end"] and [w["word"] for w in answer["words"]]
        (video,) = [e for e in events if e["type"] == "video"]
        frames = np.load(corpus / cid / "video.npy")
        assert frames.dtype == np.uint8 and frames.shape == (-(-doc["num_samples"] // 3200), 32, 32, 3)
        assert video["frames"] == len(frames) and video["frame_period_s"] == PERIOD_S
        seen |= {(q["kind"], q["channel"])}
    assert {k for k, _ in seen} == set(KINDS) and {c for _, c in seen} == {"spoken", "typed"}
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["settings"]["task"] == "action-count" and "timed_share" not in manifest["settings"]
    assert all(manifest["totals"]["event_counts"][t] >= 1 for t in ACTION_EVENT_TYPES)


def test_labels_agree_with_audio_and_video(corpus: Path) -> None:
    for cid in _ids(corpus):
        assert check_conversation(corpus / cid) == [], cid


def test_check_finds_a_frozen_action_and_a_wrong_count(corpus: Path, tmp_path: Path) -> None:
    cid = _ids(corpus)[0]
    bad = tmp_path / cid
    bad.mkdir()
    for f in (corpus / cid).iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    doc = _doc(corpus, cid)
    action = next(e for e in doc["events"] if e["type"] == "action")
    frames = np.load(bad / "video.npy")
    a, b = action["start_sample"] // 3200, action["end_sample"] // 3200
    frames[a:b] = frames[a - 1]  # the actor (and the distractor) frozen through the first action
    np.save(bad / "video.npy", frames)
    next(e for e in doc["events"] if e["type"] == "count_question")["count"] += 1
    (bad / "events.json").write_text(json.dumps(doc))
    problems = check_conversation(bad)
    assert any("the actor does not change" in p for p in problems), problems
    assert any("actions" in p and "count" in p for p in problems), problems


def test_same_seed_gives_identical_bytes(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_corpus(again, 6, seed=SEED, workers=1, task="action-count", heldout_fraction=0.0)
    for name in ("manifest.json", "conv-000002/events.json", "conv-000002/video.npy", "conv-000002/user.wav"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name


def test_video_input_gives_the_frame_of_each_chunk_on_its_first_model_frame(corpus: Path, tiny: ModelConfig) -> None:
    conv = load_conversation(corpus / _ids(corpus)[0])
    assert conv.video is not None
    got = video_input(conv, tiny)
    assert got is not None
    frames, rows = got
    chunks = -(-conv.frames // 5)
    assert frames.shape == (chunks, 3, 32, 32) and rows.tolist() == [5 * k for k in range(chunks)]
    assert torch.equal(frames[7], conv.video[7].permute(2, 0, 1).float() / 255)
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    # 400 ms chunks: the frame shown at each chunk's start (every other one), on frame 10k
    frames4, rows4 = video_input(conv, tiny, chunk_ms=400) or (None, None)
    assert rows4 is not None and frames4 is not None and rows4[:3].tolist() == [0, 10, 20]
    assert torch.equal(frames4[3], frames[6])
    small = video_input(conv, tiny.model_copy(update={"video_size": 16}))
    assert small is not None and small[0].shape[-1] == 16
    assert video_input(conv, tiny.model_copy(update={"video_size": 0})) is None
    plain = Conversation(conv.id, conv.split, conv.user, conv.model, conv.events)
    assert video_input(plain, tiny) is None


def test_streaming_feeds_each_chunk_its_frame_as_the_engine_does(corpus: Path, tiny_model: DuplexModel) -> None:
    conv = load_conversation(corpus / _ids(corpus)[1])
    codec = Codec(tiny_model.cfg)
    tracks, texts = stream_model(tiny_model, codec, [conv])
    got = video_input(conv, tiny_model.cfg)
    assert got is not None
    frames, rows = got
    state, cs = tiny_model.new_state(1), codec.new_state(1)
    by_hand = []
    with torch.no_grad():
        for k in range(-(-conv.user.shape[0] // 3200)):
            chunk = torch.zeros(1, 3200)
            piece = conv.user[k * 3200 : (k + 1) * 3200]
            chunk[0, : len(piece)] = piece
            at = (rows == 5 * k).nonzero()
            video = frames[int(at[0, 0])][None] if len(at) else None
            step = tiny_model.step(state, chunk, video=video, video_rows=torch.zeros(1, dtype=torch.long))
            by_hand.append(step.text_tokens[0])
            codec.decode(step.audio_codes, cs)
    assert np.array_equal(texts[0], torch.cat(by_hand)[: conv.frames].numpy())
    blind = Conversation(conv.id, conv.split, conv.user, conv.model, conv.events)
    blind_tracks, _ = stream_model(tiny_model, codec, [blind])
    assert not np.array_equal(tracks[0], blind_tracks[0])  # the frames reached the model


def test_numbers_reads_digits_and_words() -> None:
    assert numbers("Seven.") == [7]
    assert numbers("It jumped 7 times, no, eight.") == [7, 8]
    assert numbers("twenty-one") == [21] and numbers("twenty one") == [21] and numbers("thirty") == [30]
    assert numbers("It opens at nine, alone") == [9] and numbers("I see.") == []


@pytest.mark.parametrize(
    ("said", "correct", "answer"),
    [
        ([Utterance(10.3, "Seven.")], True, "Seven."),
        ([Utterance(10.3, "7")], True, "7"),
        ([Utterance(10.3, "Six.")], False, "Six."),
        ([Utterance(10.3, "Seven or eight.")], False, "Seven or eight."),
        ([Utterance(9.9, "Seven."), Utterance(11.0, "I see.")], False, "I see."),  # the first one after the end
        ([Utterance(15.2, "Seven.")], False, None),  # more than 5 s after the question
        ([], False, None),
    ],
)
def test_a_question_is_correct_only_with_exactly_the_count(said: list[Utterance], correct: bool, answer: str) -> None:
    s = score_question(Question("jump", 7, "spoken", 8.0, 10.0), said)
    assert (s.correct, s.answer) == (correct, answer)


def test_motion_counter_counts_bursts_and_the_peer_answers_at_the_end_of_turn() -> None:
    rng = np.random.default_rng(11)
    clip = draw_clip(rng, "jump", 6)
    still = render_clip(clip.__class__(**{**vars(clip), "velocity": (0.0, 0.0)}), clip.actions[-1][1] + 4)
    assert motion_bursts(still) == 6  # with a still distractor every jump is one burst
    assert motion_bursts(still[: clip.actions[2][0]]) == 2  # only the frames shown so far
    conv = Conversation("c", "test", torch.zeros(SR), torch.zeros(SR), [], video=torch.from_numpy(still))
    t = clip.actions[3][0] * PERIOD_S
    assert [(u.t, u.text) for u in cascade_said(conv, t, PERIOD_S)] == [(t, "3.")]
    assert cascade_said(conv, None, PERIOD_S) == []  # its turn detector never fired: no answer


def test_the_peer_answers_at_the_vad_end_of_a_spoken_question_or_the_end_of_a_typed_one() -> None:
    def conv(channel: str) -> Conversation:
        q = {"type": "count_question", "kind": "jump", "count": 5, "channel": channel, "start": 10.0, "end": 11.5}
        return Conversation("c", "test", torch.zeros(SR), torch.zeros(SR), [q])

    vad_ends = [int(4.0 * SR), int(12.1 * SR), int(15.0 * SR)]  # an earlier turn's end is not the question's
    assert cascade_answer_time(conv("spoken"), vad_ends) == pytest.approx(12.1)
    assert cascade_answer_time(conv("spoken"), vad_ends[:1]) is None
    assert cascade_answer_time(conv("typed"), []) == 11.5


def test_oracle_is_right_and_the_cascade_peer_is_measured(corpus: Path) -> None:
    convs = action_conversations([load_conversation(corpus / cid) for cid in _ids(corpus)])
    assert len(convs) == 6
    oracle = score_actions("oracle", convs, [oracle_said(c) for c in convs])
    assert (oracle.questions, oracle.accuracy, oracle.answered) == (6, 1.0, 6)
    assert set(oracle.by_kind) == set(KINDS) and set(oracle.by_channel) == {"spoken", "typed"}
    cascade = run_cascade(convs)
    assert cascade.questions == 6 and cascade.answered >= 5
    assert cascade.correct == round(cascade.accuracy * 6)


def test_cli_eval_action_count_writes_json_with_the_peer_and_the_oracle(
    corpus: Path, tmp_path: Path, eval_with_peers: EvalWithPeers
) -> None:
    args = ["model", "eval", "--task", "action-count", "--corpus", str(corpus), "--split", "train", "--limit", "1"]
    doc, systems = eval_with_peers(args, tmp_path / "ac.json")
    assert doc["task"] == "action-count" and set(systems) == {
        "duplex",
        "cascade (VAD + frame-difference counter)",
        "target track (oracle)",
    }
    assert all(s["questions"] == 1 for s in systems.values())
    assert systems["target track (oracle)"]["accuracy"] == 1.0 and systems["duplex"]["by_count"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model", "eval", "--corpus", "C", "--task", "action-count", "--baseline", "vad"], "choose cascade or oracle"),
        (["model", "eval", "--corpus", "C", "--task", "action-count", "--live"], "evaluated offline"),
    ],
)
def test_cli_rejects_bad_input_naming_what_is_wrong(
    tmp_path: Path, args: list[str], message: str, cli_error: CliError
) -> None:
    cli_error([str(tmp_path / a) if a == "C" else a for a in args], message)


def test_eval_on_a_corpus_without_count_questions_says_so(plain_corpus: Path, cli_error: CliError) -> None:
    args = ["model", "eval", "--task", "action-count", "--corpus", str(plain_corpus), "--split", "train"]
    cli_error(args, "has no count questions")


def test_count_score_judges_a_talk_timeline(tmp_path: Path) -> None:
    timeline = tmp_path / "t.json"
    events = [
        {"t": 3.0, "text": {"text": "Sure", "final": True}},
        {"t": 10.4, "text": {"text": "Sev", "final": False}},
        {"t": 10.5, "text": {"text": "en.", "final": True}},
    ]
    timeline.write_text(json.dumps({"events": events}))
    out = tmp_path / "s.json"
    result = runner.invoke(
        app, ["model", "count-score", "--timeline", str(timeline), "--count", "7", "--end", "10", "--json", str(out)]
    )
    assert result.exit_code == 0 and "correct: answered 'Seven.'" in result.output, result.output
    assert json.loads(out.read_text())["correct"] is True
    wrong = runner.invoke(app, ["model", "count-score", "--timeline", str(timeline), "--count", "6", "--end", "10"])
    assert "not correct" in wrong.output
    timeline.write_text("[]")
    bad = runner.invoke(app, ["model", "count-score", "--timeline", str(timeline), "--count", "6", "--end", "10"])
    assert bad.exit_code == 2 and "not a `duplex talk` timeline" in " ".join(bad.output.replace("│", "").split())
