"""``duplex corpus make --task timespeak``: timed requests spoken (espeak-ng; Flite in the heldout split) or
typed, their labels against the audio, the training targets and typed input, determinism, the mix with
ordinary conversations; and ``duplex model eval --task timespeak`` with its oracle and cascade peer.

One tiny corpus (5 conversations of ~20 s) is rendered once per module; seed 1 was picked because it holds
both forms, both channels, a spoken and a typed stop and barge-ins, which the tests assert."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from duplex.model.audio_io import read_wav
from duplex.model.checkpoint import save
from duplex.model.codec import Codec
from duplex.model.config import ModelConfig
from duplex.model.corpus import check_conversation, make_corpus
from duplex.model.corpus.make import TIMESPEAK_EVENT_TYPES, assign_tasks
from duplex.model.corpus.timespeak import Request, draw_request
from duplex.model.data import Conversation, load_conversation, load_split, targets, text_input
from duplex.model.evaluate import stream_model
from duplex.model.family import Floor
from duplex.model.model import DuplexModel
from duplex.model.timespeak import WORDS, requests
from duplex.model.timespeak_eval import cascade_said, oracle_said, run_cascade, score_timespeak
from duplex.model.train import TrainSettings, make_batch, to_example, train

SEED = 1
SR = 16000
CliError = Callable[[list[str], str], None]
EvalWithPeers = Callable[[list[str], Path], tuple[dict[str, Any], dict[str, dict[str, Any]]]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timespeak") / "c"
    make_corpus(out, 5, seed=SEED, min_duration_s=15, max_duration_s=22, task="timespeak")
    return out


def _docs(corpus: Path) -> list[dict[str, Any]]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    return [json.loads((corpus / c["path"] / "events.json").read_text()) for c in manifest["conversations"]]


def _all(corpus: Path) -> list[Conversation]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    return [load_conversation(corpus / c["path"]) for c in manifest["conversations"]]


def test_requests_cover_both_forms_channels_and_stops(corpus: Path) -> None:
    reqs = [e for d in _docs(corpus) for e in d["events"] if e["type"] == "timed_request"]
    assert {(r["form"], r["channel"]) for r in reqs} >= {("every", "spoken"), ("once", "typed")}
    assert {r["stop_channel"] for r in reqs if r["form"] == "every"} == {"spoken", "typed"}
    assert all(r["word"] in WORDS and 2 <= r["n"] <= 30 for r in reqs)
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["settings"]["task"] == "timespeak"
    assert all(manifest["totals"]["event_counts"][t] >= 1 for t in TIMESPEAK_EVENT_TYPES)
    assert manifest["totals"]["event_counts"]["barge_in"] >= 1  # ordinary turn-taking goes on around them


def test_labels_agree_with_audio(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    for c in manifest["conversations"]:
        assert check_conversation(corpus / c["path"]) == [], c["id"]


def test_the_model_says_the_word_exactly_at_each_due_moment_and_stops_after_stop(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    for c in manifest["conversations"]:
        events = json.loads((corpus / c["path"] / "events.json").read_text())["events"]
        model = read_wav(corpus / c["path"] / "model.wav").samples
        words = [e for e in events if e["type"] == "timed_word"]
        for r in (e for e in events if e["type"] == "timed_request"):
            mine = [w for w in words if w["request"] == r["request"]]
            assert [w["start"] for w in mine] == r["due"] and {w["word"] for w in mine} == {r["word"]}
            assert r["due"][0] == pytest.approx(r["end"] + r["n"], abs=1e-4)
            if r["form"] == "every":
                assert np.diff(r["due"]) == pytest.approx(r["n"], abs=1e-4)
                assert r["due"][-1] < r["stop"] < r["due"][-1] + r["n"]  # nothing due after the stop
            else:
                assert len(r["due"]) == 1 and r["stop"] is None
            # no other model speech is near a due moment
            spans = [(e["start"], e["end"]) for e in events if e["type"] in ("model_turn", "backchannel")]
            assert not any(a - 0.3 < d < b + 0.3 for d in r["due"] for a, b in spans)
        for w in words:  # audible from the due sample on
            assert np.any(model[w["start_sample"] : w["start_sample"] + 80])


def test_spoken_requests_say_n_in_words_and_typed_ones_in_digits(corpus: Path) -> None:
    for doc in _docs(corpus):
        events = doc["events"]
        for r in (e for e in events if e["type"] == "timed_request"):
            assert r["text"] == Request(r["word"], r["form"], r["n"], r["channel"]).text()
            if r["channel"] == "typed":
                typed = [e for e in events if e["type"] == "typed_text" and e["start"] == r["start"]]
                assert [t["text"] for t in typed] == [r["text"]] and str(r["n"]) in r["text"]
                assert typed[0]["start_sample"] % 3200 == 0  # on a 200 ms chunk boundary, as the engine feeds it
            else:
                said = [e for e in events if e["type"] == "user_speech" and e["start"] == r["start"]]
                assert [s["text"] for s in said] == [r["text"]] and str(r["n"]) not in r["text"]
                assert said[0]["end"] == r["end"]
        if doc["split"] == "heldout":
            assert doc["user_voice"]["engine"] == "flite"


def test_targets_carry_the_word_at_the_due_frame_and_typed_text_as_input(corpus: Path, tiny: ModelConfig) -> None:
    codec = Codec(tiny)
    seen_typed = False
    for conv in _all(corpus):
        t = targets(conv, tiny, codec)
        for w in (e for e in conv.events if e["type"] == "timed_word"):
            f = int(w["start"] / 0.04)
            word = w["word"].encode()
            assert bytes(t.text[f : f + len(word)].tolist()) == word and int(t.text[f + len(word)]) == tiny.eot_token
            assert int(t.control[f + 2]) == Floor.SPEAK
        typed = [e for e in conv.events if e["type"] == "typed_text"]
        if not typed:
            assert t.text_in is None
            continue
        seen_typed = True
        assert t.text_in is not None and t.text_in.shape == (conv.frames, tiny.text_in_slots)
        for e in typed:
            f = e["start_sample"] // 640
            data = e["text"].encode()
            flat = t.text_in[f:].reshape(-1)
            assert bytes(flat[: len(data)].tolist()) == data and int(flat[len(data)]) == tiny.pad_token
            assert e["end_sample"] == (f + -(-len(data) // 4)) * 640
        assert int((t.text_in != tiny.pad_token).sum()) == sum(len(e["text"].encode()) for e in typed)
    assert seen_typed


def test_typed_text_reaches_the_model_when_streamed(corpus: Path, tiny_model: DuplexModel) -> None:
    conv = next(c for c in _all(corpus) if text_input(c, tiny_model.cfg) is not None)
    first = min(e["start_sample"] for e in conv.events if e["type"] == "typed_text") // 640
    bare = Conversation(
        conv.id, conv.split, conv.user, conv.model, [e for e in conv.events if e["type"] != "typed_text"]
    )
    codec = Codec(tiny_model.cfg)
    _, (with_text,) = stream_model(tiny_model, codec, [conv])
    _, (without,) = stream_model(tiny_model, codec, [bare])
    assert np.array_equal(with_text[:first], without[:first])  # identical until the text arrives
    assert not np.array_equal(with_text, without)


def test_same_seed_gives_identical_bytes(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_corpus(again, 5, seed=SEED, workers=1, min_duration_s=15, max_duration_s=22, task="timespeak")
    for name in ("manifest.json", "conv-000001/events.json", "conv-000001/model.wav", "conv-000001/user.wav"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name


def test_timed_share_mixes_ordinary_conversations_in_by_a_seeded_draw() -> None:
    tasks = assign_tasks(200, 7, "timespeak", 0.5)
    assert tasks == assign_tasks(200, 7, "timespeak", 0.5) and 70 < tasks.count("timespeak") < 130
    assert set(assign_tasks(20, 7, "timespeak", 1.0)) == {"timespeak"}
    assert set(assign_tasks(20, 7, "turns", 1.0)) == {"turns"}
    with pytest.raises(ValueError, match="unknown task 'count'"):
        assign_tasks(3, 0, "count", 1.0)


def test_oracle_scores_every_request_and_the_cascade_peer_is_measured(corpus: Path) -> None:
    convs = _all(corpus)
    oracle = score_timespeak("oracle", convs, [oracle_said(c) for c in convs], [c.model.numpy() for c in convs])
    assert oracle.requests == sum(len(requests(c.events)) for c in convs) and oracle.accuracy == 1.0
    assert oracle.timing_error_abs_p95 is not None and oracle.timing_error_abs_p95 < 0.05
    assert oracle.audio_at_due == 1.0
    cascade = run_cascade(convs)
    assert cascade.requests == oracle.requests and cascade.accuracy < 0.5
    # it speaks a timed word only at its ends of turn, so every hit it has is a turn end near a due moment
    assert cascade.hits <= sum(1 for c in convs for e in c.events if e["type"] in ("user_turn_end", "typed_text"))


def test_cascade_says_the_word_only_when_a_turn_ends_near_a_due_moment() -> None:
    events = [
        {"type": "timed_request", "request": 0, "word": "up", "form": "every", "n": 3, "channel": "spoken",
         "start": 0.0, "end": 1.0, "due": [4.0, 7.0], "stop": 8.0, "window_end": 12.0},
    ]  # fmt: skip
    conv = Conversation("hand", "test", torch.zeros(12 * SR), torch.zeros(12 * SR), events)
    said = cascade_said(conv, [1.5, 4.3, 8.5])
    assert [(u.t, u.word) for u in said] == [(1.5, None), (4.3, "up"), (8.5, None)]
    m = score_timespeak("cascade", [conv], [said])
    assert (m.hits, m.missing, m.accuracy) == (1, 1, 0.0)


def test_cli_eval_timespeak_writes_json_with_the_peer_and_the_oracle(
    corpus: Path, tmp_path: Path, eval_with_peers: EvalWithPeers
) -> None:
    args = ["model", "eval", "--task", "timespeak", "--corpus", str(corpus), "--split", "train"]
    doc, systems = eval_with_peers(args, tmp_path / "ts.json")
    assert doc["task"] == "timespeak" and set(systems) == {
        "duplex",
        "cascade (VAD + turn-based, no timer)",
        "target track (oracle)",
    }
    n = sum(len(requests(c.events)) for c in load_split(corpus, "train"))
    assert all(s["requests"] == n for s in systems.values())
    assert systems["target track (oracle)"]["accuracy"] == 1.0
    assert set(systems["duplex"]["by_form"]) <= {"once", "every"} and systems["duplex"]["by_n"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["corpus", "make", "--out", "X", "--conversations", "10", "--task", "count"], "unknown task 'count'"),
        (
            ["corpus", "make", "--out", "X", "--conversations", "10", "--timed-share", "0.5"],
            "only with --task timespeak",
        ),
        (["corpus", "make", "--out", "X", "--conversations", "10", "--timed-max-n", "4"], "only with --task timespeak"),
        (["model", "eval", "--corpus", "C", "--task", "timespeak", "--baseline", "vad"], "choose cascade or oracle"),
    ],
)
def test_cli_rejects_bad_input_naming_what_is_wrong(
    tmp_path: Path, args: list[str], message: str, cli_error: CliError
) -> None:
    cli_error([str(tmp_path / a) if a in ("X", "C") else a for a in args], message)


def test_eval_timespeak_on_a_split_without_requests_says_so(plain_corpus: Path, cli_error: CliError) -> None:
    args = ["model", "eval", "--task", "timespeak", "--corpus", str(plain_corpus), "--split", "train"]
    cli_error(args, "has no timed requests")


def test_max_n_bounds_the_delays_asked_for() -> None:
    rng = np.random.default_rng(0)
    drawn = [draw_request(rng, max_n=4) for _ in range(300)]
    assert {r.n for r in drawn} == {2, 3, 4} and {r.form for r in drawn} == {"once", "every"}
    assert {r.n for r in (draw_request(rng) for _ in range(300))} > set(range(2, 10))


def test_training_takes_typed_batches_and_starts_from_init(corpus: Path, tmp_path: Path, tiny: ModelConfig) -> None:
    examples = [to_example(c, tiny, Codec(tiny)) for c in load_split(corpus, "train")]
    typed = next(e for e in examples if e.t.text_in is not None)
    batch = make_batch([typed], random.Random(0), 2, 100, tiny.frame_samples)
    assert batch["text_in"].shape == (2, 100, tiny.text_in_slots)
    torch.manual_seed(5)
    start = DuplexModel(tiny)
    save(start, tmp_path / "init.safetensors")
    s = TrainSettings(
        corpus=corpus, out=tmp_path / "ft.safetensors", steps=1, batch=2, crop_s=4.0, eval_every=1, lr=1e-9
    )
    train(s.model_copy(update={"init": tmp_path / "init.safetensors"}), log=lambda _: None)
    tuned = torch.load(tmp_path / "ft.state.pt", weights_only=False)["model"]
    assert all(torch.allclose(tuned[k], v, atol=1e-5) for k, v in start.state_dict().items())
