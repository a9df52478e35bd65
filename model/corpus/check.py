"""Do a conversation's labels agree with its audio? A training corpus with wrong labels teaches wrong
turn-taking silently, so every generated conversation can be checked against its own WAV files.

Checks (each failure is one line of the returned list):
- all three WAVs are 16 kHz, mono, 16-bit, ``num_samples`` long;
- ``user_clean.wav`` is exactly zero outside ``user_speech`` events, and every event starts and ends on
  audible samples (its first and last 5 ms are not silent) — so pauses and silences are silent and
  ``user_turn_end`` is the real end of speech; the same for ``model.wav`` with ``model_turn``,
  ``backchannel`` and ``timed_word`` events;
- in the microphone track ``user.wav`` every user utterance is at least ``min_snr_db`` above the local
  noise floor (after undoing the labelled gain steps);
- every barge-in stops the model within ``max_reaction_s`` of the user's onset, and the model stays
  silent from the stop until its next labelled event;
- every timed request's words start exactly at its due moments (N s after its end, then every N s), say
  its word, and its stop (if any) lies between two due moments;
- an action-count conversation's ``video.npy`` has one frame per chunk, its actions are one kind, on frame
  boundaries, with the stated lengths and gaps, each visible as a change around the actor, all before the
  count question, whose count they are; the model answers it once, after it, with the count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from duplex.model.audio_io import read_wav
from duplex.model.corpus.actions import check_actions
from duplex.model.corpus.audio import SAMPLE_RATE, rms

EDGE = SAMPLE_RATE * 5 // 1000
REVERB_GUARD = int(0.6 * SAMPLE_RATE)  # longer than any synthetic room's RT60
NOISE_WINDOW = SAMPLE_RATE // 10


def _spans(events: list[dict[str, Any]], *types: str) -> list[tuple[int, int]]:
    return sorted((e["start_sample"], e["end_sample"]) for e in events if e["type"] in types)


def _track_agrees(name: str, x: npt.NDArray[np.int16], spans: list[tuple[int, int]]) -> list[str]:
    problems: list[str] = []
    active = np.zeros(len(x), bool)
    previous_end = 0
    for start, end in spans:
        if not 0 <= start < end <= len(x):
            problems.append(f"{name}: span [{start}, {end}) is empty or outside the track")
            continue
        if start < previous_end:
            problems.append(f"{name}: span at {start / SAMPLE_RATE:.3f}s overlaps the previous one")
        previous_end = max(previous_end, end)
        active[start:end] = True
        if not np.any(x[start : start + EDGE]) or not np.any(x[end - EDGE : end]):
            problems.append(
                f"{name}: span [{start / SAMPLE_RATE:.3f}, {end / SAMPLE_RATE:.3f})s does not start "
                "and end on audible samples"
            )
    stray = np.flatnonzero(x[~active])
    if len(stray):
        first = int(np.flatnonzero(~active)[stray[0]])
        problems.append(
            f"{name}: {len(stray)} non-silent samples outside labelled speech (first at {first / SAMPLE_RATE:.3f}s)"
        )
    return problems


def _gain_db(events: list[dict[str, Any]], n: int) -> npt.NDArray[np.float64]:
    """The labelled microphone gain over time (linear ramps in dB), to undo before measuring SNR."""
    gain = np.zeros(n)
    for e in (e for e in events if e["type"] == "gain_change"):
        a, b = e["start_sample"], e["end_sample"]
        gain[a:b] = np.linspace(e["from_db"], e["to_db"], b - a)
        gain[b:] = e["to_db"]
    return gain


def _snr_problems(mic: npt.NDArray[np.int16], events: list[dict[str, Any]], min_snr_db: float) -> list[str]:
    y = mic.astype(np.float64) / 10 ** (_gain_db(events, len(mic)) / 20)
    speech = _spans(events, "user_speech")
    quiet = np.ones(len(y), bool)
    for start, end in speech:
        quiet[start : end + REVERB_GUARD] = False
    starts = np.arange(0, len(y) - NOISE_WINDOW, NOISE_WINDOW // 2)
    ok = np.array([quiet[s : s + NOISE_WINDOW].all() for s in starts], bool)
    if not ok.any():
        return ["user: no noise-only stretch to measure the noise floor"]
    starts = starts[ok]
    floors = np.array([rms(y[s : s + NOISE_WINDOW]) for s in starts])
    problems = []
    for start, end in speech:
        near = np.abs(starts - (start + end) // 2) < 10 * SAMPLE_RATE
        floor = max(float(floors[near].min() if near.any() else floors.min()), 1e-9)
        snr = 20 * np.log10(max(rms(y[start:end]), 1e-9) / floor)
        if snr < min_snr_db:
            problems.append(f"user: speech at {start / SAMPLE_RATE:.3f}s only {snr:.1f} dB above the noise floor")
    return problems


def _barge_in_problems(
    model: npt.NDArray[np.int16], clean: npt.NDArray[np.int16], events: list[dict[str, Any]], max_reaction_s: float
) -> list[str]:
    problems = []
    model_starts = sorted(e["start_sample"] for e in events if e["type"] in ("model_turn", "backchannel", "timed_word"))
    for e in (e for e in events if e["type"] == "barge_in"):
        onset, stop = e["start_sample"], e["end_sample"]
        reaction = (stop - onset) / SAMPLE_RATE
        if not 0.0 <= reaction <= max_reaction_s + 1e-9:
            problems.append(f"barge-in at {onset / SAMPLE_RATE:.3f}s: reaction {reaction:.3f}s out of range")
        following = [s for s in model_starts if s >= stop]
        until = following[0] if following else len(model)
        if np.any(model[stop:until]):
            problems.append(f"barge-in at {onset / SAMPLE_RATE:.3f}s: model audible after its stop")
        if not np.any(model[onset:stop]):
            problems.append(f"barge-in at {onset / SAMPLE_RATE:.3f}s: model was not speaking at the onset")
        if not np.any(clean[onset : onset + EDGE]):
            problems.append(f"barge-in at {onset / SAMPLE_RATE:.3f}s: no user speech at the onset")
    return problems


def _timed_problems(events: list[dict[str, Any]]) -> list[str]:
    """Every timed request's due moments are N s apart from its end, each with its word (and no other word)."""
    problems = []
    words = [e for e in events if e["type"] == "timed_word"]
    for r in (e for e in events if e["type"] == "timed_request"):
        mine = sorted(w["start_sample"] for w in words if w["request"] == r["request"])
        due = [r["end_sample"] + k * r["n"] * SAMPLE_RATE for k in range(1, len(r["due"]) + 1)]
        if mine != due or [round(d / SAMPLE_RATE, 6) for d in due] != r["due"]:
            problems.append(f"timed request {r['request']} ({r['text']!r}): words at {mine}, due at {due}")
        if any(w["word"] != r["word"] for w in words if w["request"] == r["request"]):
            problems.append(f"timed request {r['request']}: a word other than {r['word']!r}")
        if r["stop"] is not None and not due[-1] < r["stop"] * SAMPLE_RATE < due[-1] + r["n"] * SAMPLE_RATE:
            problems.append(f"timed request {r['request']}: stop at {r['stop']}s is not between two due moments")
    return problems


def check_conversation(directory: Path, min_snr_db: float = 6.0, max_reaction_s: float = 0.2) -> list[str]:
    """Return every disagreement between ``events.json`` and the WAVs in ``directory`` (empty = all good)."""
    doc = json.loads((directory / "events.json").read_text())
    n, events = int(doc["num_samples"]), doc["events"]
    tracks = {}
    problems = []
    for name, filename in doc["files"].items():
        wav = read_wav(directory / filename)
        if (wav.rate, wav.channels, wav.sample_width, len(wav.samples)) != (SAMPLE_RATE, 1, 2, n):
            problems.append(
                f"{filename}: {wav.rate} Hz, {wav.channels} ch, {8 * wav.sample_width} bit, "
                f"{len(wav.samples)} samples; want {SAMPLE_RATE} Hz mono 16-bit, {n} samples"
            )
        tracks[name] = wav.samples
    if problems:
        return problems
    clean, model, mic = tracks["user_clean"], tracks["model"], tracks["user"]
    problems += _track_agrees("user_clean", clean, _spans(events, "user_speech"))
    problems += _track_agrees("model", model, _spans(events, "model_turn", "backchannel", "timed_word"))
    for e in events:
        a, b = e["start_sample"], e["end_sample"]
        if e["type"] in ("pause", "silence") and np.any(clean[a:b]):
            problems.append(f"{e['type']} at {a / SAMPLE_RATE:.3f}s: user speech inside")
        if e["type"] == "silence" and np.any(model[a:b]):
            problems.append(f"silence at {a / SAMPLE_RATE:.3f}s: model speech inside")
        if e["type"] == "user_turn_end":
            ends = [s["end_sample"] for s in events if s["type"] == "user_speech" and s["turn"] == e["turn"]]
            if not ends or max(ends) != a:
                problems.append(f"user_turn_end at {a / SAMPLE_RATE:.3f}s is not the end of the turn's speech")
    problems += _snr_problems(mic, events, min_snr_db)
    problems += _barge_in_problems(model, clean, events, max_reaction_s)
    return problems + _timed_problems(events) + check_actions(directory, doc)
