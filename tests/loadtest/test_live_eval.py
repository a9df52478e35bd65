"""Turn-taking evaluated live-mic (``duplex model eval --live``): corpus conversations streamed in real time
through a real ``duplex up`` (shipped checkpoint), scored by the offline scorer on the model audio as heard.

The placement rule and the scorer are checked on recordings with injected arrival times (no server, no clock);
the live run is checked against the offline run of the same conversations: the same model audio (the server
steps batch-invariantly, the offline run too), heard no earlier than the offline placement."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.loadtest.live_eval import (
    LiveRun,
    delivery,
    heard_track,
    pcm16,
    said_live,
    score_live,
    stream_live,
    typed_text,
    up_args,
)
from duplex.loadtest.local import LocalUp
from duplex.model.codec import Codec
from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import make_corpus
from duplex.model.data import Conversation, load_split
from duplex.model.evaluate import run_model, score, stream_model, turn_latencies
from duplex.model.model import DuplexModel
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource
from duplex.serving.client import Conversation as Record
from duplex.serving.client import Received
from duplex.v1 import duplex_pb2 as pb

CHUNK_MS = 200
C = 16000 * CHUNK_MS // 1000
"""Samples per chunk."""
FRAME_S = 0.04


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(
        out,
        4,
        seed=7,  # its 3 test conversations hold every kind of event: turn ends, pauses, a back-channel, a barge-in
        workers=2,
        min_duration_s=14,
        max_duration_s=18,
        validation_fraction=0.0,
        test_fraction=0.75,
        heldout_fraction=0.0,
        timing=Timing(reply_gap=(0.0, 0.08), barge_reaction=(0.06, 0.12)),
    )
    return out


@pytest.fixture(scope="module")
def convs(corpus: Path) -> list[Conversation]:
    convs: list[Conversation] = load_split(corpus, "test")
    return convs


def recording(chunks: list[npt.NDArray[np.int16]], arrivals_us: list[int], start_us: int = 10**9) -> Record:
    """A client's record of model chunks that arrived at the given client times (capture start ``start_us``)."""
    rec = Record(start_us=start_us, chunk_us=CHUNK_MS * 1000)
    for seq, (pcm, t) in enumerate(zip(chunks, arrivals_us, strict=True)):
        audio = pb.ModelAudio(seq=seq, pcm=pcm.tobytes(), samples=C, output_sample=seq * C)
        rec.received.append(Received(start_us + t, pb.ServerEvent(audio=audio)))
        rec.sent_us[seq] = start_us + (seq + 1) * CHUNK_MS * 1000
    return rec


def as_chunks(track: npt.NDArray[np.int16], late_by: int) -> list[npt.NDArray[np.int16]]:
    """The model's chunks of a track placed ``late_by`` samples after its own sample 0."""
    whole = np.concatenate([track[late_by:], np.zeros(C, np.int16)])
    return [whole[k * C : (k + 1) * C] for k in range(len(track) // C)]


def test_a_chunk_is_heard_when_it_arrives_or_when_the_one_before_has_played() -> None:
    ones = [np.full(C, v, np.int16) for v in (1000, 2000, 3000)]
    # chunk 0 heard 50 ms after its capture end; chunk 1 arrives while chunk 0 still plays; chunk 2 arrives late
    rec = recording(ones, [250_000, 300_000, 900_000])
    track = heard_track(rec, 20 * C)
    heard_at = [0.25, 0.45, 0.9]
    for v, at in zip((1000, 2000, 3000), heard_at, strict=True):
        a = round(at * 16000)
        assert np.all(track[a : a + C] == np.float32(v / 32768)), at
    assert not track[: round(0.25 * 16000)].any()
    assert not track[round(0.65 * 16000) : round(0.9 * 16000)].any()  # nothing to play until chunk 2 came
    assert not track[round(1.1 * 16000) :].any()
    d = delivery([rec])
    assert (d.chunks, d.heard_delay_p50_s) == (3, pytest.approx(0.05))
    assert d.heard_delay_p95_s == pytest.approx(0.05 + 0.9 * 0.25)  # chunk 2: heard 0.3 s after its capture end


def test_live_and_offline_scores_agree_exactly_on_one_track(convs: list[Conversation]) -> None:
    """A model track (the corpus' target track, its first chunk silent as any model's output is) arriving
    exactly at each chunk's capture end is heard where the offline evaluation places it, and scores the same;
    heard 120 ms later, every turn it takes is taken 120 ms later."""
    targets = []
    for conv in convs:
        t = conv.model.numpy().copy()
        t[:C] = 0.0
        targets.append(t)
    for delay_us in (0, 120_000):
        tracks, records = [], []
        for target in targets:
            chunks = as_chunks(pcm16(target), C)  # chunk k: what the track plays one chunk after its capture
            rec = recording(chunks, [(k + 1) * CHUNK_MS * 1000 + delay_us for k in range(len(chunks))])
            records.append(rec)
            tracks.append(heard_track(rec, len(target)))
        run = LiveRun(records, tracks, CHUNK_MS, delivery(records))
        live, offline = score_live("live", convs, run), score("offline", convs, targets)
        if delay_us == 0:
            assert all(np.array_equal(h, t) for h, t in zip(tracks, targets, strict=True))
            assert asdict(live) | {"system": ""} == asdict(offline) | {"system": ""}
        else:
            pairs = [
                (lv, off)
                for c, h, t in zip(convs, tracks, targets, strict=True)
                for lv, off in zip(turn_latencies(c, h), turn_latencies(c, t), strict=True)
                if lv is not None and off is not None and off > 0.01
            ]
            assert pairs and all(lv == pytest.approx(off + 0.12, abs=0.011) for lv, off in pairs)


@pytest.fixture(scope="module")
def up() -> Iterator[LocalUp]:
    with LocalUp(args=up_args(None, CHUNK_MS, 3)) as up:
        yield up


@pytest.fixture(scope="module")
def offline(convs: list[Conversation]) -> list[npt.NDArray[np.float32]]:
    """The offline run of the conversations, batch-invariant as the server steps them, as PCM16 like the
    server sends it, back on the scorer's float scale."""
    model = load_part(ModelSource())
    assert isinstance(model, DuplexModel)
    outs = run_model(model, Codec(model.cfg), convs, CHUNK_MS, batch_invariant=True)
    return [(np.round(o * 32767.0).astype(np.int16)).astype(np.float32) / np.float32(32768.0) for o in outs]


def test_live_turn_taking_is_scored_from_what_was_heard(
    up: LocalUp, convs: list[Conversation], offline: list[npt.NDArray[np.float32]]
) -> None:
    run = stream_live(up.address, convs, CHUNK_MS, concurrency=3)
    assert run.delivery.chunks == sum(-(-len(c.user) // C) for c in convs)
    assert run.delivery.substituted == 0, "a client stalled 0.6 s: the model heard silence, not the corpus"
    pairs = 0
    for conv, rec, heard, off in zip(convs, run.records, run.tracks, offline, strict=True):
        n = len(heard)
        # the model's audio itself is the offline run's, chunk for chunk (placed by model time, one chunk late)
        by_model_time = rec.output_track(16000, n, model_time=True).astype(np.float32) / np.float32(32768.0)
        assert np.array_equal(by_model_time[: n - C], off[C:]), conv.id
        # ... and heard no earlier than the offline placement: never before its input chunk was captured
        assert all(at >= (a.seq + 1) * C for at, a in rec.placements(16000))
        for live_s, offline_s in zip(turn_latencies(conv, heard), turn_latencies(conv, off), strict=True):
            if live_s is not None and offline_s is not None:
                assert live_s >= offline_s - FRAME_S, conv.id
                pairs += 1
    assert pairs > 0
    # the live figures are the offline scorer's on the heard tracks; the offline scorer on the offline tracks
    # counts the same user acts
    live, off_m = score_live("live", convs, run), score("offline", convs, offline)
    assert asdict(live) == asdict(score("live", convs, run.tracks))
    assert (live.turns, live.pauses, live.barge_ins) == (off_m.turns, off_m.pauses, off_m.barge_ins)


def test_eval_live_cli_starts_its_own_server_and_writes_the_live_figures(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "live.json"
    args = ["model", "eval", "--corpus", str(corpus), "--live", "--limit", "2", "--concurrency", "2"]
    r = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["live"] is True and doc["address"] == "duplex up"
    (system,) = doc["systems"]
    assert (system["system"], system["conversations"]) == ("duplex (live)", 2)
    assert doc["delivery"]["conversations"] == 2 and doc["delivery"]["chunks"] > 0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--address", "127.0.0.1:1"], "--address"),  # without --live
        (["--live", "--concurrency", "0"], "--concurrency"),
        (["--live", "--limit", "0"], "--limit"),
        (["--task", "words"], "--task"),
        (["--live", "--split", "heldout", "--address", "127.0.0.1:1"], "heldout"),
        (["--live", "--address", "127.0.0.1:1"], "UNAVAILABLE"),  # nothing listens there
    ],
)
def test_eval_refuses_bad_input_with_a_message(corpus: Path, extra: list[str], named: str) -> None:
    r = CliRunner().invoke(app, ["model", "eval", "--corpus", str(corpus), *extra])
    assert r.exit_code == 2, r.output
    assert named in r.output


def test_eval_offline_cli_takes_a_limit(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "offline.json"
    r = CliRunner().invoke(app, ["model", "eval", "--corpus", str(corpus), "--limit", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["live"] is False and [s["conversations"] for s in doc["systems"]] == [1]


def test_timespeak_live_text_is_placed_where_its_chunk_was_heard() -> None:
    """Text deltas become utterances at the heard start of the audio chunk with their seq: chunk 15 arrives
    late, at 3.5 s, so its word is heard then, and every later chunk plays after it (chunk 30 at 3.5 + 15 x 0.2
    s); typed text goes out right before the chunk it starts in."""
    silent = [np.zeros(C, np.int16) for _ in range(40)]
    arrivals = [(k + 1) * CHUNK_MS * 1000 + 20_000 for k in range(40)]
    arrivals[15] = 3_500_000
    rec = recording(silent, arrivals)
    for seq, text, final in ((15, "go", True), (30, "go", False), (31, "", True)):
        event = pb.ServerEvent(text=pb.TextDelta(seq=seq, text=text, final=final))
        rec.received.append(Received(rec.start_us + arrivals[seq] + 1, event))
    got = said_live(rec)
    assert [(u.t, u.word) for u in got] == [(3.5, "go"), (pytest.approx(6.5), "go")]
    typed = {"type": "typed_text", "start_sample": 7 * C, "text": "Say up in 3 seconds."}
    conv = Conversation("c", "test", np.zeros(1), np.zeros(1), [typed])  # type: ignore[arg-type]
    ((index, event),) = typed_text(conv, C)
    assert (index, event.text.text) == (7, "Say up in 3 seconds.")


def test_typed_requests_reach_the_served_model_where_the_offline_run_feeds_them(up: LocalUp, tmp_path: Path) -> None:
    """A TimeSpeak conversation with a typed request ("Say left in 4 seconds." at 4.2 s; seed 4), streamed live
    with its typed text: the served model's audio and text are the offline run's, which feeds the text at the
    frames the corpus gives it. The text would differ had the typed bytes reached the model a chunk later
    (checked offline here), so they reached it at those frames. The two other conversations have none."""
    make_corpus(tmp_path, 3, seed=4, min_duration_s=8, max_duration_s=12, task="timespeak", timed_max_n=4,
                validation_fraction=0.0, test_fraction=0.0, heldout_fraction=0.0)  # fmt: skip
    convs = load_split(tmp_path, "train")
    assert [len(typed_text(c, C)) for c in convs] == [0, 1, 0]
    model = load_part(ModelSource())
    assert isinstance(model, DuplexModel)
    tracks, texts = stream_model(model, Codec(model.cfg), convs, CHUNK_MS, batch_invariant=True)
    late = [dict(e, start_sample=e["start_sample"] + C) if e["type"] == "typed_text" else e for e in convs[1].events]
    moved = Conversation(convs[1].id, "train", convs[1].user, convs[1].model, late)
    assert not np.array_equal(stream_model(model, Codec(model.cfg), [moved], CHUNK_MS, True)[1][0], texts[1])
    run = stream_live(up.address, convs, CHUNK_MS, concurrency=3)
    assert run.delivery.substituted == 0, "a client stalled: the model heard silence, not the corpus"
    for conv, rec, off, text in zip(convs, run.records, tracks, texts, strict=True):
        n = len(off)
        by_model_time = rec.output_track(16000, n, model_time=True)
        served = np.round(off * 32767.0).astype(np.int16)  # the engine's PCM16, as in the ``offline`` fixture
        assert np.array_equal(by_model_time[: n - C], served[C:]), conv.id
        live_text = "".join(r.event.text.text for r in rec.of("text"))
        assert live_text == bytes(int(v) for v in text if v < 256).decode("utf-8", "replace"), conv.id
