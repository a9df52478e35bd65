"""The speech-conversation corpus generator (``duplex corpus make``): format, labels vs audio, barge-ins,
voice-disjoint splits, determinism and CLI errors. One tiny corpus (4 conversations of ~20 s) is rendered
once per module; seed 3 was picked because it holds every event type, which the tests assert."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from duplex.cli import app
from duplex.model.audio_io import read_wav
from duplex.model.corpus import check_conversation, make_corpus, textgen
from duplex.model.corpus.audio import SAMPLE_RATE
from duplex.model.corpus.flite import FLITE_VOICES, FliteError, FliteVoice
from duplex.model.corpus.make import EVENT_TYPES, voice_split
from duplex.model.corpus.tts import MODEL_VOICE, render

SEED = 3
SIZE = ["--conversations", "4", "--min-duration", "15", "--max-duration", "20"]
runner = CliRunner()


def _conversations(corpus: Path) -> list[Path]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    return [corpus / c["path"] for c in manifest["conversations"]]


def _events(conv: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads((conv / "events.json").read_text())["events"]
    return events


def _flat(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping, for substring checks."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("corpus") / "a"
    result = runner.invoke(app, ["corpus", "make", "--out", str(out), "--seed", str(SEED), "--workers", "2", *SIZE])
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def corpus(made: tuple[Path, Result]) -> Path:
    return made[0]


@pytest.fixture(scope="module")
def manifest(corpus: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((corpus / "manifest.json").read_text())
    return loaded


def test_cli_make_reports_splits_and_speed(made: tuple[Path, Result]) -> None:
    output = _flat(made[1].output)
    assert "train" in output and "validation" in output and "test" in output
    assert re.search(r"\d+ s of audio per CPU-second", output), output


def test_files_have_the_wire_format_and_one_time_axis(corpus: Path, manifest: dict[str, Any]) -> None:
    assert len(manifest["conversations"]) == 4
    for entry in manifest["conversations"]:
        conv = corpus / entry["path"]
        doc = json.loads((conv / "events.json").read_text())
        lengths = set()
        for name in ("user.wav", "user_clean.wav", "model.wav"):
            wav = read_wav(conv / name)
            assert (wav.rate, wav.channels, wav.sample_width) == (SAMPLE_RATE, 1, 2), name
            lengths.add(len(wav.samples))
        assert lengths == {doc["num_samples"]} == {entry["num_samples"]}
        assert 15.0 <= doc["duration_s"] <= 20.0 + 12.0
        assert doc["sample_rate"] == SAMPLE_RATE and doc["model_voice"]["name"] == "en-us+m7"
        starts = [e["start_sample"] for e in doc["events"]]
        assert starts == sorted(starts)
        for e in doc["events"]:
            assert 0 <= e["start_sample"] <= e["end_sample"] <= doc["num_samples"], e
            assert e["start"] == pytest.approx(e["start_sample"] / SAMPLE_RATE, abs=1e-6)
        assert entry["event_counts"] == {t: sum(e["type"] == t for e in doc["events"]) for t in EVENT_TYPES}


def test_corpus_holds_every_event_type(manifest: dict[str, Any]) -> None:
    counts = manifest["totals"]["event_counts"]
    assert all(counts[t] >= 1 for t in EVENT_TYPES), counts


def test_labels_agree_with_audio(corpus: Path) -> None:
    for conv in _conversations(corpus):
        assert check_conversation(conv) == [], conv.name


def test_speech_boundaries_are_measured_from_the_audio(corpus: Path) -> None:
    """Speech events start and end on the exact first/last non-silent sample of the clean track."""
    for conv in _conversations(corpus):
        clean = read_wav(conv / "user_clean.wav").samples
        model = read_wav(conv / "model.wav").samples
        for e in _events(conv):
            track = {"user_speech": clean, "model_turn": model, "backchannel": model}.get(e["type"])
            if track is not None:
                a, b = e["start_sample"], e["end_sample"]
                assert track[a] != 0 and track[b - 1] != 0, e["type"]
                assert a == 0 or track[a - 1] == 0
                assert b == len(track) or track[b] == 0
            if e["type"] == "user_turn_end":
                a = e["start_sample"]
                assert clean[a - 1] != 0 and not np.any(clean[a : a + SAMPLE_RATE * 15 // 100])
            if e["type"] == "pause":
                assert 0.2 - 1e-6 <= e["end"] - e["start"] <= 0.9 + 1e-6
                assert not np.any(clean[e["start_sample"] : e["end_sample"]])
            if e["type"] == "model_turn" and "gap_s" in e:  # replies (not the greeting) follow a user turn
                assert 0.15 - 1e-6 <= e["gap_s"] <= 0.30 + 1e-6


def test_barge_ins_stop_the_model_within_the_reaction_time(corpus: Path) -> None:
    seen = 0
    for conv in _conversations(corpus):
        model = read_wav(conv / "model.wav").samples
        clean = read_wav(conv / "user_clean.wav").samples
        events = _events(conv)
        for e in (e for e in events if e["type"] == "barge_in"):
            seen += 1
            onset, stop = e["start_sample"], e["end_sample"]
            assert 0.12 - 1e-6 <= e["reaction_s"] <= 0.20 + 1e-6
            assert e["model_stop"] - e["user_onset"] == pytest.approx(e["reaction_s"], abs=1e-5)
            assert clean[onset] != 0 and not np.any(clean[onset - SAMPLE_RATE // 10 : onset])
            assert np.any(model[onset:stop]), "the model was speaking when the user barged in"
            next_model = min(
                (
                    m["start_sample"]
                    for m in events
                    if m["type"] in ("model_turn", "backchannel") and m["start_sample"] > stop
                ),
                default=len(model),
            )
            assert not np.any(model[stop:next_model]), "the model track must be silent after its stop"
            turn = next(m for m in events if m["type"] == "model_turn" and m["model_turn"] == e["model_turn"])
            assert turn["interrupted"] and turn["end_sample"] <= stop
            spoken = turn["text"].split()
            assert spoken and len(spoken) < len(turn["full_text"].split())
            assert e["spoken_text"] == turn["text"]
    assert seen >= 1


def test_text_is_recorded_with_word_timings(corpus: Path) -> None:
    for conv in _conversations(corpus):
        for e in _events(conv):
            if e["type"] not in ("user_speech", "model_turn"):
                continue
            words = e["words"]
            assert words, e
            starts = [w["start"] for w in words]
            assert starts == sorted(starts)
            assert e["start"] - 1e-4 <= starts[0] and words[-1]["end"] <= e["end"] + 1e-4
            if e["type"] == "user_speech" or not e["interrupted"]:
                assert [w["word"] for w in words] == re.findall(r"[A-Za-z0-9']+", e["text"])


def test_splits_are_disjoint_by_voice_and_the_heldout_split_by_engine(manifest: dict[str, Any]) -> None:
    allowed = voice_split()
    assert not set(allowed["test"]) & set(allowed["train"])
    by_split: dict[str, set[str]] = {"train": set(), "validation": set(), "test": set(), "heldout": set()}
    for entry in manifest["conversations"]:
        voice = entry["user_voice"]
        if entry["split"] == "heldout":
            assert voice["engine"] == "flite" and voice["voice"] in FLITE_VOICES, voice
            by_split["heldout"].add(voice["name"])
        else:
            assert voice["engine"] == "espeak-ng" and voice["variant"] in allowed[entry["split"]], voice
            by_split[entry["split"]].add(voice["variant"])
    assert all(by_split.values()), by_split
    assert not by_split["test"] & (by_split["train"] | by_split["validation"])
    assert manifest["voice_split"]["test_variants"] == list(allowed["test"])
    assert manifest["voice_split"]["heldout_engine"] == "flite"


def test_flite_renders_speech_that_differs_by_voice_and_settings() -> None:
    """The held-out engine speaks: audible, trimmed, level-normalised, and each voice/setting sounds different."""
    text = "could you tell me when the train leaves"
    renders = {
        v: render(text, FliteVoice(v, duration_stretch=1.0, f0_mean=120.0, f0_stddev=20.0)) for v in ("kal16", "slt")
    }
    slower = render(text, FliteVoice("slt", duration_stretch=1.2, f0_mean=120.0, f0_stddev=20.0))
    for r in (*renders.values(), slower):
        assert 0.8 < r.duration_s < 5.0
        assert abs(20 * np.log10(float(np.sqrt(np.mean(r.samples**2)))) + 26.0) < 0.1
        assert [w.text for w in r.words] == text.split()
        assert r.words[0].start == 0 and r.words[-1].end == len(r.samples)
    assert len(renders["kal16"].samples) != len(renders["slt"].samples)
    assert len(slower.samples) > 1.1 * len(renders["slt"].samples)


def test_voice_warp_scales_tempo_and_keeps_word_timings() -> None:
    text = "we could meet near the station at noon"
    plain = render(text, MODEL_VOICE)
    warped = render(text, replace(MODEL_VOICE, warp=1.15))
    assert abs(len(warped.samples) / len(plain.samples) - 1 / 1.15) < 0.03
    assert [w.text for w in warped.words] == [w.text for w in plain.words]
    for a, b in zip(plain.words[1:], warped.words[1:], strict=True):
        assert abs(b.start - a.start / 1.15) < 0.03 * SAMPLE_RATE  # word events follow the warp


def test_flite_missing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FliteError, match="install the Debian package flite"):
        FliteVoice("kal", 1.0, 100.0, 20.0).synthesize("hello")


def test_same_seed_gives_identical_bytes_whatever_the_workers(corpus: Path, tmp_path: Path) -> None:
    again = make_corpus(tmp_path / "b", 4, seed=SEED, workers=1, min_duration_s=15, max_duration_s=20)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.out) for p in again.out.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus / rel).read_bytes() == (again.out / rel).read_bytes(), rel


def test_different_seed_gives_different_conversations(corpus: Path, tmp_path: Path) -> None:
    other = make_corpus(tmp_path / "c", 2, seed=SEED + 1, workers=2, min_duration_s=15, max_duration_s=20)
    for name in ("user.wav", "model.wav", "events.json"):
        assert (corpus / "conv-000000" / name).read_bytes() != (other.out / "conv-000000" / name).read_bytes()


def test_checker_catches_labels_that_disagree(corpus: Path, tmp_path: Path) -> None:
    def corrupted(edit: str) -> list[str]:
        src = next(
            c
            for c in _conversations(corpus)
            if any(e["type"] == "barge_in" for e in _events(c)) and any(e["type"] == "backchannel" for e in _events(c))
        )
        dst = tmp_path / edit
        shutil.copytree(src, dst)
        doc = json.loads((dst / "events.json").read_text())
        events = doc["events"]
        if edit == "speech_ends_early":
            speech = next(e for e in events if e["type"] == "user_speech")
            speech["end_sample"] -= SAMPLE_RATE // 5
        elif edit == "backchannel_unlabelled":
            events.remove(next(e for e in events if e["type"] == "backchannel"))
        elif edit == "slow_barge_in":
            barge = next(e for e in events if e["type"] == "barge_in")
            barge["start_sample"] -= SAMPLE_RATE // 10
        (dst / "events.json").write_text(json.dumps(doc))
        problems: list[str] = check_conversation(dst)
        return problems

    assert any("user_clean" in p for p in corrupted("speech_ends_early"))
    assert any("model" in p for p in corrupted("backchannel_unlabelled"))
    assert any("reaction" in p for p in corrupted("slow_barge_in"))


def test_text_generator_varies_and_uses_every_pause_cue() -> None:
    rng = np.random.default_rng(0)
    clauses = [textgen.statement_clause(rng) for _ in range(2000)]
    assert len(set(clauses)) >= 1990
    turns = [textgen.user_turn(rng) for _ in range(300)]
    cues = {c.cue for t in turns for c in t.clauses[:-1]}
    assert cues == {"comma", "comma_conjunction", "bare_conjunction"}
    for t in turns:
        assert t.clauses[-1].cue == "final"
        assert t.clauses[-1].text.endswith("?" if t.is_question else ".")
        for c in t.clauses[:-1]:
            ending = {
                "comma": ",",
                "comma_conjunction": f", {c.conjunction},",
                "bare_conjunction": f" {c.conjunction}",
            }[c.cue]
            assert c.text.endswith(ending), c
    assert textgen.number_words(42) == "forty two" and textgen.number_words(305) == "three hundred and five"
    assert textgen.user_turn(np.random.default_rng(5)) == textgen.user_turn(np.random.default_rng(5))


def test_cli_check_passes_on_the_corpus(corpus: Path) -> None:
    result = runner.invoke(app, ["corpus", "check", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "4 of 4 conversations agree" in _flat(result.output)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--conversations", "0"], "--conversations"),
        (["--conversations", "2", "--workers", "0"], "--workers"),
        (["--conversations", "2", "--min-duration", "30", "--max-duration", "20"], "--min-duration"),
        (["--conversations", "2", "--seed", "-1"], "--seed"),
        (["--conversations", "2", "--reply-gap", "0.3"], "--reply-gap"),
        (["--conversations", "2", "--reply-gap", "0.3,0.1"], "--reply-gap"),
        (["--conversations", "2", "--barge-reaction", "0.01,0.1"], "--barge-reaction"),
        (["--conversations", "2", "--voice-warp", "0.5,1.1"], "--voice-warp"),
        (["--conversations", "4", "--heldout-fraction", "0.5", "--test-fraction", "0.5"], "--heldout-fraction"),
    ],
)
def test_cli_rejects_bad_input_naming_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    result = runner.invoke(app, ["corpus", "make", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code != 0
    assert option in _flat(result.output), result.output
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_cli_rejects_unwritable_or_occupied_out(tmp_path: Path, corpus: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["corpus", "make", "--out", str(blocker / "corpus"), "--conversations", "1"])
    assert result.exit_code != 0 and "--out" in _flat(result.output), result.output
    result = runner.invoke(app, ["corpus", "make", "--out", str(corpus), "--conversations", "1"])
    assert result.exit_code != 0 and "--force" in _flat(result.output), result.output
