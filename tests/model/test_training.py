"""Labels, a short training run, resume/determinism, and evaluation on a small real corpus."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from duplex.model.codec import Codec
from duplex.model.config import ModelConfig
from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import make_corpus
from duplex.model.data import Conversation, load_split, targets
from duplex.model.evaluate import run_model, run_vad_baseline, score
from duplex.model.model import DuplexModel
from duplex.model.train import TrainSettings, loss_fn, make_batch, to_example, train
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_LISTEN, FLOOR_SPEAK, FLOOR_YIELD


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(
        out,
        8,
        seed=3,
        workers=2,
        min_duration_s=20,
        max_duration_s=25,
        validation_fraction=0.25,
        test_fraction=0.25,
        heldout_fraction=0.0,
    )
    return out


@pytest.fixture(scope="module")
def train_convs(corpus: Path) -> list[Conversation]:
    return load_split(corpus, "train")


def test_labels_follow_the_events(train_convs: list[Conversation], tiny: ModelConfig) -> None:
    codec = Codec(tiny)
    seen = set()
    for conv in train_convs:
        t = targets(conv, tiny, codec)
        seen |= set(t.control.tolist())
        for ev in conv.events:
            mid = int((ev["start"] + ev["end"]) / 2 / 0.04)
            if ev["type"] == "model_turn":
                assert t.control[mid] == FLOOR_SPEAK
                word = ev["words"][0]["word"].encode()
                at = int(ev["words"][0]["start"] / 0.04)
                assert bytes(t.text[at : at + len(word)].tolist()) == word
            elif ev["type"] == "backchannel":
                assert t.control[mid] == FLOOR_BACKCHANNEL
            elif ev["type"] == "pause":
                assert t.control[mid] in (FLOOR_LISTEN, FLOOR_BACKCHANNEL)
                assert t.weight[mid] == 3.0
            elif ev["type"] == "barge_in":
                assert t.control[round(ev["model_stop"] / 0.04)] == FLOOR_YIELD
        speaking = (t.control == FLOOR_SPEAK) | (t.control == FLOOR_BACKCHANNEL)
        # the codec codes of the target track are silent where the model listens, and mostly not where it speaks
        assert (t.audio[t.control == FLOOR_LISTEN] < tiny.silent_codes).float().mean() > 0.95
        assert (t.audio[speaking] >= tiny.silent_codes).float().mean() > 0.6
    assert {FLOOR_LISTEN, FLOOR_SPEAK} <= seen


def test_short_training_lowers_the_loss(train_convs: list[Conversation], tiny: ModelConfig) -> None:
    codec = Codec(tiny)
    examples = [to_example(c, tiny, codec) for c in train_convs]
    torch.manual_seed(0)
    model = DuplexModel(tiny)
    fixed = make_batch(examples, random.Random(1), 2, 150, tiny.frame_samples)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = loss_fn(model, fixed, gen, 0.0)[1]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):  # a few seconds of training on these crops
        loss, _ = loss_fn(model, fixed, gen, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model, fixed, gen, 0.0)[1]
    assert after["loss"] < 0.7 * before["loss"]
    assert after["control"] < before["control"]


def test_training_is_deterministic_and_resumable(corpus: Path, tmp_path: Path) -> None:
    common = {"corpus": corpus, "batch": 2, "crop_s": 4.0, "eval_every": 2, "seed": 7}
    straight = train(TrainSettings(out=tmp_path / "a" / "m.safetensors", steps=4, **common), log=lambda _: None)
    assert straight["steps"] == 4 and len(straight["history"]) == 2
    # the same run split in two sessions: 2 steps, then resumed from the state file to 4
    half = TrainSettings(out=tmp_path / "b" / "m.safetensors", steps=4, **common)
    first = train(TrainSettings(out=half.out, steps=4, session_steps=2, **common), log=lambda _: None)
    assert first["steps"] == 2
    resumed = train(half, log=lambda _: None)
    assert resumed["steps"] == 4
    a = torch.load(tmp_path / "a" / "m.state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "m.state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_file(str(tmp_path / "a" / "m.safetensors"))  # the best checkpoint was written


def test_evaluation_produces_every_metric(corpus: Path, tiny_model: DuplexModel) -> None:
    convs = load_split(corpus, "test")
    model_m = score("duplex", convs, run_model(tiny_model, Codec(tiny_model.cfg), convs))
    vad_m = score("vad", convs, run_vad_baseline(convs))
    oracle = score("oracle", convs, [c.model.numpy() for c in convs])
    for m in (model_m, vad_m, oracle):
        assert m.turns > 0 and m.pauses > 0
        for k in ("tor", "false_takeover", "interrupts_user", "overlap", "backchannel_rate"):
            assert 0.0 <= getattr(m, k) <= 1.0
    # the target track is what a perfect model says: it takes every turn, in its scripted 150-300 ms gap
    assert oracle.tor == 1.0 and oracle.false_takeover == 0.0
    assert oracle.latency_p50 is not None and 0.1 < oracle.latency_p50 < 0.35
    # the server-VAD cascade needs its 500 ms of silence before it can answer
    assert vad_m.latency_p50 is not None and vad_m.latency_p50 >= 0.5


def test_timing_options_shape_the_ground_truth(tmp_path: Path) -> None:
    """--reply-gap / --barge-reaction set the target model's reply gap and barge-in reaction."""
    out = tmp_path / "fast"
    make_corpus(
        out,
        3,
        seed=3,
        workers=2,
        min_duration_s=20,
        max_duration_s=25,
        validation_fraction=0.0,
        test_fraction=0.0,
        heldout_fraction=0.0,
        timing=Timing(reply_gap=(0.0, 0.05), barge_reaction=(0.06, 0.08)),
    )
    events = [e for c in load_split(out, "train") for e in c.events]
    gaps = [e["gap_s"] for e in events if e["type"] == "model_turn" and "gap_s" in e]
    reactions = [e["reaction_s"] for e in events if e["type"] == "barge_in"]
    assert gaps and all(g <= 0.05 + 1e-3 for g in gaps)
    assert all(0.06 - 1e-3 <= r <= 0.08 + 1e-3 for r in reactions)
