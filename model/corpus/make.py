"""Build a corpus: split assignment, voice hold-out, parallel rendering and ``manifest.json``.

Determinism: the bytes of a corpus depend only on ``seed``, the conversation count and the duration
and split settings — not on ``workers``. Two things make that true: every conversation draws from its own
seeded generator, and every conversation is rendered in a *fresh* process (a pool with
``maxtasksperchild=1``), because espeak-ng carries state from one utterance to the next (see tts.py).

Voice hold-out: user voices are espeak-ng variants (timbres) crossed with accents. A fixed set of variants
is reserved for the test split — fixed across seeds, so test voices stay unseen by *every* training corpus
this tool makes, and corpora made with different seeds can be merged without leaking test voices.
Validation uses the training variants: new conversations in known voices, the memorisation check of
docs/corpus.md.

Engine hold-out: the ``heldout`` split (``heldout_fraction``) is spoken by Flite (flite.py), a TTS engine no
other split uses, so a model trained on the train split is scored on voices, prosody and timing from a
synthesiser it never heard.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duplex.model.corpus.conversation import FORMAT, ConversationSpec, Timing, generate
from duplex.model.corpus.flite import FLITE_VOICES
from duplex.model.corpus.tts import MODEL_VOICE, USER_VARIANTS, Espeak

SPLITS = ("train", "validation", "test", "heldout")
HELDOUT_ENGINE = "flite"
"""The TTS engine of the ``heldout`` split; every other split is spoken by espeak-ng."""
EVENT_TYPES = (
    "user_speech",
    "pause",
    "user_turn",
    "user_turn_end",
    "model_turn",
    "backchannel",
    "barge_in",
    "silence",
    "noise",
    "gain_change",
)
TIMESPEAK_EVENT_TYPES = ("timed_request", "timed_word", "typed_text")
"""Events only ``--task timespeak`` conversations have (counted in its manifest)."""
ACTION_EVENT_TYPES = ("video", "action", "count_question", "typed_text")
"""Events only ``--task action-count`` conversations have (counted in its manifest)."""
TASK_EVENT_TYPES = {"turns": (), "timespeak": TIMESPEAK_EVENT_TYPES, "action-count": ACTION_EVENT_TYPES}
TASKS = ("turns", "timespeak", "action-count")
VOICE_SPLIT_SEED = 20261125
TEST_VARIANT_FRACTION = 0.15


def voice_split() -> dict[str, tuple[str, ...]]:
    """Variants allowed per split: a fixed ~15 % of variants (at least one) is reserved for ``test``."""
    order = np.random.default_rng(VOICE_SPLIT_SEED).permutation(len(USER_VARIANTS))
    n_test = max(1, round(TEST_VARIANT_FRACTION * len(USER_VARIANTS)))
    test = tuple(sorted(USER_VARIANTS[i] for i in order[:n_test]))
    seen = tuple(sorted(USER_VARIANTS[i] for i in order[n_test:]))
    return {"train": seen, "validation": seen, "test": test, "heldout": ()}


def assign_tasks(n: int, seed: int, task: str, timed_share: float) -> list[str]:
    """Per conversation its task: with ``task`` timespeak, each conversation is a TimeSpeak one with probability
    ``timed_share`` (its own seeded draw), else an ordinary one; otherwise every conversation has ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose {', '.join(TASKS)}")
    if not 0.0 <= timed_share <= 1.0:
        raise ValueError(f"timed share {timed_share} is not within 0..1")
    if task != "timespeak":
        return [task] * n
    draws = np.random.default_rng([seed, 4]).random(n)
    return ["timespeak" if d < timed_share else "turns" for d in draws]


def assign_splits(
    n: int, seed: int, validation_fraction: float, test_fraction: float, heldout_fraction: float = 0.0
) -> list[str]:
    """Split labels for conversations 0..n-1, shuffled by ``seed``.

    A non-zero fraction gets at least one conversation once there are three or more, so even a tiny
    corpus has every split.
    """

    def count(fraction: float) -> int:
        k = round(n * fraction)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_val, n_test, n_held = count(validation_fraction), count(test_fraction), count(heldout_fraction)
    n_train = n - n_val - n_test - n_held
    if n_train < 1:
        raise ValueError(f"{n} conversations leave none for training with these split fractions")
    labels = ["train"] * n_train + ["validation"] * n_val + ["test"] * n_test + ["heldout"] * n_held
    order = np.random.default_rng([seed, 2]).permutation(n)
    return [labels[i] for i in order]


@dataclass(frozen=True)
class CorpusReport:
    """What was made, and how fast (worker CPU seconds are measured inside each rendering process)."""

    out: Path
    manifest: dict[str, Any]
    audio_seconds: float
    worker_cpu_seconds: float
    wall_seconds: float

    @property
    def audio_per_cpu_second(self) -> float:
        return self.audio_seconds / max(self.worker_cpu_seconds, 1e-9)


def _context() -> Any:
    """Fresh processes for conversations, created by ``fork`` while this process has never loaded espeak-ng
    (cheap: nothing is re-imported), else by a ``forkserver``, whose children start from a clean library
    state (on Python 3.11 each of them re-runs the main script, ~1 CPU-s when that is the duplex CLI)."""
    if not Espeak.loaded():
        return mp.get_context("fork")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["duplex.model.corpus.conversation"])
    return context


def _render_one(job: tuple[ConversationSpec, str]) -> dict[str, Any]:
    """Pool task: render and write one conversation; returns its manifest entry plus its CPU time."""
    spec, out = job
    conversation = generate(spec)
    conversation.write(Path(out) / spec.conversation_id)
    doc = conversation.doc
    counts = Counter(e["type"] for e in doc["events"])
    types = EVENT_TYPES + TASK_EVENT_TYPES[spec.task]
    return {
        "id": spec.conversation_id,
        "split": spec.split,
        "path": spec.conversation_id,
        "user_voice": doc["user_voice"],
        "duration_s": doc["duration_s"],
        "num_samples": doc["num_samples"],
        "event_counts": {t: counts.get(t, 0) for t in types},
        **({"task": spec.task} if spec.task != "turns" else {}),
        "_cpu_s": time.process_time(),
    }


def make_corpus(
    out: Path,
    conversations: int,
    seed: int = 0,
    workers: int = 2,
    min_duration_s: float = 45.0,
    max_duration_s: float = 90.0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    timing: Timing | None = None,
    heldout_fraction: float = 0.1,
    task: str = "turns",
    timed_share: float = 1.0,
    timed_max_n: int = 30,
) -> CorpusReport:
    """Render ``conversations`` conversations into ``out`` (one folder each) and write ``manifest.json``."""
    if conversations < 1:
        raise ValueError("conversations must be at least 1")
    if not 0 < min_duration_s <= max_duration_s:
        raise ValueError("need 0 < min_duration_s <= max_duration_s")
    min_duration_s, max_duration_s = float(min_duration_s), float(max_duration_s)  # 15 and 15.0: same bytes
    validation_fraction, test_fraction = float(validation_fraction), float(test_fraction)
    heldout_fraction = float(heldout_fraction)
    started = time.perf_counter()
    splits = assign_splits(conversations, seed, validation_fraction, test_fraction, heldout_fraction)
    tasks = assign_tasks(conversations, seed, task, timed_share)
    if not 2 <= timed_max_n <= 30:
        raise ValueError(f"timed max N {timed_max_n} is not within 2..30 seconds")
    variants = voice_split()
    timing = timing or Timing()
    jobs = [
        (
            ConversationSpec(
                f"conv-{i:06d}",
                seed,
                i,
                split,
                variants[split],
                min_duration_s,
                max_duration_s,
                timing,
                HELDOUT_ENGINE if split == "heldout" else "espeak-ng",
                tasks[i],
                timed_max_n,
            ),
            str(out),
        )
        for i, split in enumerate(splits)
    ]
    entries = []
    with _context().Pool(min(workers, conversations), maxtasksperchild=1) as pool:
        for entry in pool.imap_unordered(_render_one, jobs):
            entries.append(entry)
            if on_done is not None:
                on_done(entry)
    entries.sort(key=lambda e: str(e["id"]))
    cpu = sum(float(e.pop("_cpu_s")) for e in entries)
    manifest = _manifest(
        entries, seed, conversations, min_duration_s, max_duration_s, validation_fraction, test_fraction, variants
    )
    manifest["settings"]["heldout_fraction"] = heldout_fraction
    manifest["settings"]["timing"] = asdict(timing)
    if task != "turns":
        manifest["settings"]["task"] = task
        if task == "timespeak":
            manifest["settings"] |= {"timed_share": float(timed_share), "timed_max_n": timed_max_n}
        manifest["totals"]["event_counts"] |= {
            t: sum(e["event_counts"].get(t, 0) for e in entries) for t in TASK_EVENT_TYPES[task]
        }
        manifest["totals"]["tasks"] = dict(sorted(Counter(tasks).items()))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    audio = sum(float(e["duration_s"]) for e in entries)
    return CorpusReport(out, manifest, audio, cpu, time.perf_counter() - started)


def _manifest(
    entries: list[dict[str, Any]],
    seed: int,
    conversations: int,
    min_duration_s: float,
    max_duration_s: float,
    validation_fraction: float,
    test_fraction: float,
    variants: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    by_split = {
        s: {
            "conversations": sum(e["split"] == s for e in entries),
            "duration_s": round(sum(e["duration_s"] for e in entries if e["split"] == s), 3),
            "user_voices": sorted({e["user_voice"]["name"] for e in entries if e["split"] == s}),
        }
        for s in SPLITS
    }
    events = {t: sum(e["event_counts"][t] for e in entries) for t in EVENT_TYPES}
    return {
        "format": FORMAT,
        "seed": seed,
        "sample_rate": 16_000,
        "settings": {
            "conversations": conversations,
            "min_duration_s": min_duration_s,
            "max_duration_s": max_duration_s,
            "validation_fraction": validation_fraction,
            "test_fraction": test_fraction,
        },
        "model_voice": MODEL_VOICE.to_json(),
        "voice_split": {
            "unit": "espeak-ng variant",
            "test_variants": list(variants["test"]),
            "train_validation_variants": list(variants["train"]),
            "heldout_engine": HELDOUT_ENGINE,
            "heldout_voices": list(FLITE_VOICES),
        },
        "totals": {
            "conversations": len(entries),
            "duration_s": round(sum(e["duration_s"] for e in entries), 3),
            "splits": by_split,
            "event_counts": events,
        },
        "conversations": entries,
    }
