"""``evaluate.score`` split into small functions: identical results to the single function it was, on corpus
conversations scored against several kinds of model track."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import numpy as np
import numpy.typing as npt
import pytest

from duplex.model.codec import Codec
from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import make_corpus
from duplex.model.data import Conversation, load_split
from duplex.model.detect import speech_segments
from duplex.model.evaluate import TURN_MIN_S, Metrics, run_model, run_vad_baseline, score
from duplex.model.model import DuplexModel
from duplex.model.runtime import load_part
from duplex.model.spec import ModelSource


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
        timing=Timing(reply_gap=(0.0, 0.08), barge_reaction=(0.06, 0.12)),
    )
    convs: list[Conversation] = load_split(corpus, "test")
    return convs


def tracks(convs: list[Conversation]) -> dict[str, list[npt.NDArray[np.float32]]]:
    """Model tracks of every kind the scorer meets: the served model, a cascade, the ground truth, late and
    babbling variants of it, silence."""
    model = load_part(ModelSource())
    assert isinstance(model, DuplexModel)
    rng = np.random.default_rng(3)
    oracle = [c.model.numpy() for c in convs]
    babble = []
    for o in oracle:
        b = o.copy()
        for at in rng.integers(0, len(b) - 8000, 12):
            b[at : at + int(rng.integers(800, 8000))] += 0.05 * rng.standard_normal(1).astype(np.float32)
        babble.append(b)
    return {
        "model 200 ms": run_model(model, Codec(model.cfg), convs),
        "model 80 ms": run_model(model, Codec(model.cfg), convs, 80),
        "vad": run_vad_baseline(convs),
        "oracle": oracle,
        "oracle 0.3 s late": [np.concatenate([np.zeros(4800, np.float32), o[:-4800]]) for o in oracle],
        "babble": babble,
        "silence": [np.zeros_like(o) for o in oracle],
    }


def test_split_score_equals_the_single_function(convs: list[Conversation]) -> None:
    seen_barges = seen_turns = 0
    for name, outs in tracks(convs).items():
        for chunk_ms in (200, 80):
            new, old = score(name, convs, outs, chunk_ms), score_before_split(name, convs, outs, chunk_ms)
            assert asdict(new) == asdict(old), name
            seen_barges += new.barge_ins_evaluated
            seen_turns += len(new.latencies)
        # one conversation at a time, too (each tally starts empty)
        for c, o in zip(convs, outs, strict=True):
            assert asdict(score(name, [c], [o])) == asdict(score_before_split(name, [c], [o]))
    assert seen_barges > 0 and seen_turns > 0  # the comparison met every kind of event


# --- the single function as it was, kept here only to compare against --------------------------------------
def score_before_split(
    system: str, convs: list[Conversation], outputs: list[npt.NDArray[np.float32]], chunk_ms: int = 200
) -> Metrics:
    lat: list[float] = []
    turns = taken = pauses = false_to = pause_on = clauses = interrupts = 0
    barges = barge_eval = bc_opps = bc_hits = 0
    stops: list[float] = []
    user_time = overlap_time = 0.0
    for conv, out in zip(convs, outputs, strict=True):
        segs = speech_segments(out)
        talking = np.zeros(int(len(out) / 16000 * 100) + 1, bool)  # model speech on a 10 ms grid
        for a, b in segs:
            talking[int(a * 100) : int(b * 100)] = True
        onsets = [(a, b) for a, b in segs]
        user_starts = sorted(e["start"] for e in conv.events if e["type"] == "user_speech")
        barge_users = {e["user_turn"] for e in conv.events if e["type"] == "barge_in"}
        for e in conv.events:
            kind = e["type"]
            if kind == "user_turn_end":
                nxt = next((s for s in user_starts if s > e["start"] + 0.05), float("inf"))
                turns += 1
                cand = [a for a, _ in onsets if e["start"] - 0.2 <= a <= min(e["start"] + 3.0, nxt)]
                if cand:
                    taken += 1
                    lat.append(max(0.0, cand[0] - e["start"]))
            elif kind == "pause":
                pauses += 1
                if any(e["start"] <= a < e["end"] + 0.2 and b - a >= TURN_MIN_S for a, b in onsets):
                    false_to += 1
                if any(e["start"] <= a < e["end"] + 0.2 for a, _ in onsets):
                    pause_on += 1
            elif kind == "user_speech" and e.get("turn") not in barge_users:
                user_time += e["end"] - e["start"]
                overlap_time += float(talking[int(e["start"] * 100) : int(e["end"] * 100)].sum()) / 100
                clauses += 1
                if any(e["start"] + 0.2 <= a < e["end"] and b - a >= TURN_MIN_S for a, b in onsets):
                    interrupts += 1
            elif kind == "barge_in":
                barges += 1
                u = e["user_onset"]
                covering = [(a, b) for a, b in segs if a <= u < b]
                if covering:
                    barge_eval += 1
                    stops.append(covering[0][1] - u)
            elif kind == "backchannel":
                bc_opps += 1
                if any(e["start"] - 0.5 <= a <= e["end"] + 0.5 and b - a < TURN_MIN_S for a, b in onsets):
                    bc_hits += 1
    within = chunk_ms / 1000 * 2  # one chunk of delivery delay + one chunk to react
    return Metrics(
        system=system,
        conversations=len(convs),
        turns=turns,
        tor=taken / turns if turns else 0.0,
        latency_p50=float(np.percentile(lat, 50)) if lat else None,
        latency_p95=float(np.percentile(lat, 95)) if lat else None,
        latency_mean=statistics.fmean(lat) if lat else None,
        pauses=pauses,
        false_takeover=false_to / pauses if pauses else 0.0,
        pause_onsets=pause_on / pauses if pauses else 0.0,
        interrupts_user=interrupts / clauses if clauses else 0.0,
        barge_ins=barges,
        barge_ins_evaluated=barge_eval,
        barge_in_stop_p50=float(np.percentile(stops, 50)) if stops else None,
        barge_in_within_chunk=sum(s <= within for s in stops) / len(stops) if stops else None,
        backchannel_rate=bc_hits / bc_opps if bc_opps else 0.0,
        overlap=overlap_time / user_time if user_time else 0.0,
        chunk_ms=chunk_ms,
        latencies=lat,
    )
