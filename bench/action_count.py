"""Action-count accuracy ("How many times did it jump?") of checkpoints on the splits of a ``duplex corpus make
--task action-count`` corpus, beside the cascade peer (silero-vad + a frame-difference motion counter) and the
target track, written to ``bench/results/action_count.json`` (the "Action count" section of docs/benchmarks.md).

    python bench/action_count.py --corpus C --split test [--checkpoint CKPT ...] [--name N --title T]

Every system is scored by ``duplex.model.actions``: a question is correct when the first utterance that starts
within 5 s of the question's end holds exactly the count and no other number. The model runs offline
(``duplex model eval --task action-count``): each chunk is fed the frame shown at its start, its text placed one
chunk late as a listener gets it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task_eval import Scorers, Task, bench_task

from duplex.model.actions import ActionCountMetrics
from duplex.model.actions_eval import action_conversations, evaluate_offline, run_cascade, score_actions
from duplex.model.data import Conversation
from duplex.model.timespeak_eval import oracle_said

SUMMARY = (
    "A question counts only when the first utterance within 5 s of its end holds exactly the count and no other "
    "number. The cascade peer answers when the question's turn ends (silero-vad, 500 ms of silence, or the end of "
    "the typed question) with the bursts of frame-to-frame change it counted, not knowing which shape is the actor."
)
FIGURES = (("answered", "answered within 5 s"), ("off_by_one", "off by one"), ("latency_p50", "answer latency p50 (s)"))
GROUPS = (("by_kind", "accuracy, action"), ("by_channel", "accuracy, question"), ("by_count", "accuracy, count"))
TASK = Task("action_count", "Action count (video)", "questions", FIGURES, GROUPS, SUMMARY)


def oracle(convs: list[Conversation]) -> ActionCountMetrics:
    return score_actions("oracle", convs, [oracle_said(c) for c in convs])


def main() -> None:
    bench_task(__doc__, TASK, Scorers(action_conversations, evaluate_offline, run_cascade, oracle))


if __name__ == "__main__":
    main()
