"""Scripted conversations for the load test: a ``duplex corpus make`` corpus, or a small default one built
with espeak-ng on first use into a cache folder (``$DUPLEX_CACHE``, default ``~/.cache/duplex``)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from duplex.model.audio_io import read_wav

from .listener import Script

SAMPLE_RATE = 16_000
DEFAULT_CORPUS = "loadtest-corpus-v1"
"""Cache folder name of the default corpus; bump it when its settings change."""
DEFAULT_CONVERSATIONS = 8
DEFAULT_SEED = 11
DEFAULT_DURATION_S = (10.0, 20.0)
"""Short conversations: every user reaches several turn ends even in a short run."""


@dataclass(frozen=True)
class ScriptedConversation:
    """One conversation a load-test user holds: the user's microphone track and its labelled acts."""

    conversation_id: str
    user: npt.NDArray[np.int16]
    """The user track (``user.wav``): PCM16 mono at 16 kHz, sample 0 = capture start."""
    script: Script


def cache_dir() -> Path:
    return Path(os.environ.get("DUPLEX_CACHE") or Path.home() / ".cache" / "duplex")


def load_conversation(directory: Path) -> ScriptedConversation:
    """Read ``user.wav`` and ``events.json`` of one corpus conversation (layout: docs/corpus.md)."""
    doc = json.loads((directory / "events.json").read_text())
    # any rate or layout libsndfile reads is converted (soxr, channels averaged): a corpus is 16 kHz mono
    wav = read_wav(directory / doc.get("files", {}).get("user", "user.wav"), sample_rate=SAMPLE_RATE, mono=True)
    events = doc["events"]
    ends = sorted(float(e["start"]) for e in events if e["type"] == "user_turn_end")
    starts = sorted(float(e["start"]) for e in events if e["type"] == "user_speech")
    return ScriptedConversation(str(doc.get("id", directory.name)), wav.samples, Script(tuple(ends), tuple(starts)))


def load_corpus(corpus: Path, split: str | None = None) -> list[ScriptedConversation]:
    """Every conversation of ``corpus`` listed in its ``manifest.json`` (of ``split`` when given)."""
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"--corpus {corpus}: no manifest.json (make one with `duplex corpus make`)")
    entries = json.loads(manifest_path.read_text())["conversations"]
    chosen = [e for e in entries if split is None or e["split"] == split]
    if not chosen:
        raise ValueError(f"--corpus {corpus}: no conversations" + (f" in split {split!r}" if split else ""))
    return [load_conversation(corpus / e["path"]) for e in chosen]


def default_corpus() -> Path:
    """The default corpus, built once (a few seconds of espeak-ng) and reused from the cache."""
    out = cache_dir() / DEFAULT_CORPUS
    if (out / "manifest.json").is_file():
        return out
    from duplex.model.corpus.make import make_corpus

    building = out.with_name(out.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    lo, hi = DEFAULT_DURATION_S
    make_corpus(building, DEFAULT_CONVERSATIONS, seed=DEFAULT_SEED, workers=2, min_duration_s=lo, max_duration_s=hi)
    try:
        building.rename(out)  # atomic: a concurrent first use sees a whole corpus or none
    except OSError:
        shutil.rmtree(building, ignore_errors=True)  # another process finished first
    return out
