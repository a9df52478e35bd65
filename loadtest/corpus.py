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
LONG_SPAN_S = 20.0
"""A default corpus for ``--min-conversation-s S`` asks for conversations of S to S + this many seconds."""


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


def seconds(conv: ScriptedConversation) -> float:
    return len(conv.user) / SAMPLE_RATE


def load_corpus(corpus: Path, split: str | None = None, min_seconds: float = 0.0) -> list[ScriptedConversation]:
    """Every conversation of ``corpus`` listed in its ``manifest.json`` (of ``split`` when given) whose user
    track lasts at least ``min_seconds``."""
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"--corpus {corpus}: no manifest.json (make one with `duplex corpus make`)")
    entries = json.loads(manifest_path.read_text())["conversations"]
    chosen = [e for e in entries if split is None or e["split"] == split]
    if not chosen:
        raise ValueError(f"--corpus {corpus}: no conversations" + (f" in split {split!r}" if split else ""))
    loaded = [load_conversation(corpus / e["path"]) for e in chosen]
    long_enough = [c for c in loaded if seconds(c) >= min_seconds]
    if not long_enough:
        longest = max(seconds(c) for c in loaded)
        raise ValueError(
            f"--min-conversation-s {min_seconds:g}: no conversation of --corpus {corpus} lasts that long "
            f"(the longest: {longest:.1f} s)"
        )
    return long_enough


def default_corpus(min_seconds: float = 0.0) -> Path:
    """The default corpus, built once (a few seconds of espeak-ng) and reused from the cache. With
    ``min_seconds`` above the default's shortest, a long variant (``min_seconds`` to ``+ LONG_SPAN_S``
    seconds per conversation, its own cache folder) is built instead."""
    lo, hi = DEFAULT_DURATION_S
    name = DEFAULT_CORPUS
    if min_seconds > lo:
        lo, hi = min_seconds, min_seconds + LONG_SPAN_S
        name = f"{DEFAULT_CORPUS}-min{min_seconds:g}s"
    out = cache_dir() / name
    if (out / "manifest.json").is_file():
        return out
    from duplex.model.corpus.make import make_corpus

    building = out.with_name(out.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    make_corpus(building, DEFAULT_CONVERSATIONS, seed=DEFAULT_SEED, workers=2, min_duration_s=lo, max_duration_s=hi)
    try:
        building.rename(out)  # atomic: a concurrent first use sees a whole corpus or none
    except OSError:
        shutil.rmtree(building, ignore_errors=True)  # another process finished first
    return out
