"""TimeSpeak accuracy of checkpoints on the splits of a ``duplex corpus make --task timespeak`` corpus, beside
the cascade peer (silero-vad + a turn-based responder with no timer) and the target track, written to
``bench/results/timespeak.json`` (the "TimeSpeak" section of docs/benchmarks.md).

    python bench/timespeak.py --corpus C --split test --split heldout [--checkpoint CKPT ...] [--name N --title T]

Every system is scored by ``duplex.model.timespeak``: a request is correct when each due moment has the right
word within ±0.5 s and no extra TimeSpeak word falls in its window. The model runs offline
(``duplex model eval --task timespeak``), its text placed one chunk late as a listener gets it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task_eval import Scorers, Task, bench_task

from duplex.model.data import Conversation
from duplex.model.timespeak import TimeSpeakMetrics
from duplex.model.timespeak_eval import evaluate_offline, oracle_said, run_cascade, score_timespeak, timed_conversations

SUMMARY = (
    "A request counts only when every due moment has its word within ±0.5 s and no extra TimeSpeak word is said "
    "in its window (no partial credit). The cascade peer knows each request's word and due times but can speak "
    "only when a user turn ends (silero-vad, 500 ms of silence) or a typed text arrives."
)
FIGURES = (
    ("hits", "due moments with the right word on time"),
    ("wrong", "due moments with another word"),
    ("missing", "due moments with no word"),
    ("extra", "extra words (early, late, repeated, after stop)"),
    ("timing_error_abs_p50", "timing error of hits, abs p50 (s)"),
    ("timing_error_abs_p95", "timing error of hits, abs p95 (s)"),
    ("audio_at_due", "due moments where the output audio starts speech (±0.5 s)"),
)
GROUPS = (("by_form", "accuracy, form"), ("by_channel", "accuracy, request"), ("by_n", "accuracy, N ="))
TASK = Task("timespeak", "TimeSpeak (timed requests)", "requests", FIGURES, GROUPS, SUMMARY)


def oracle(convs: list[Conversation]) -> TimeSpeakMetrics:
    return score_timespeak("oracle", convs, [oracle_said(c) for c in convs], [c.model.numpy() for c in convs])


def main() -> None:
    bench_task(__doc__, TASK, Scorers(timed_conversations, evaluate_offline, run_cascade, oracle))


if __name__ == "__main__":
    main()
