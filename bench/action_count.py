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

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, write_result

from duplex.model import checkpoint
from duplex.model.actions import ActionCountMetrics
from duplex.model.actions_eval import action_conversations, evaluate_offline, run_cascade, score_actions
from duplex.model.codec import Codec
from duplex.model.data import load_split
from duplex.model.model import DuplexModel
from duplex.model.runtime import SHIPPED
from duplex.model.timespeak_eval import oracle_said


def fmt(v: object) -> str:
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def rows(columns: list[ActionCountMetrics]) -> list[list[str]]:
    out = [
        ["questions", *[str(m.questions) for m in columns]],
        ["**accuracy**", *[f"**{m.accuracy:.3f}**" for m in columns]],
        ["answered within 5 s", *[str(m.answered) for m in columns]],
        ["off by one", *[str(m.off_by_one) for m in columns]],
        ["answer latency p50 (s)", *[fmt(m.latency_p50) for m in columns]],
    ]
    for group, label in (("by_kind", "action"), ("by_channel", "question"), ("by_count", "count")):
        keys = sorted({k for m in columns for k in getattr(m, group)}, key=lambda k: (len(k), k))
        for k in keys:
            cells = [getattr(m, group).get(k) for m in columns]
            out.append(
                [
                    f"accuracy, {label} {k}",
                    *["—" if c is None else f"{c['accuracy']:.3f} ({c['questions']})" for c in cells],
                ]
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", action="append", default=[], help="Splits to score (default: test).")
    p.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="Checkpoints (default: the shipped one)."
    )
    p.add_argument("--name", default="action_count", help="Result file name under bench/results.")
    p.add_argument("--title", default="Action count (video)", help="The section's title.")
    p.add_argument("--note", default="", help="A sentence added to the summary (how a checkpoint was made).")
    p.add_argument("--no-write", action="store_true", help="Print the table only.")
    args = p.parse_args()
    splits = args.split or ["test"]
    ckpts = args.checkpoint or [SHIPPED / "tiny.safetensors"]
    header, columns, notes = ["metric"], [], []
    for split in splits:
        convs = action_conversations(load_split(args.corpus, split))
        for ckpt in ckpts:
            model = checkpoint.load(ckpt)
            assert isinstance(model, DuplexModel)
            t0 = time.perf_counter()
            columns.append(evaluate_offline(model.eval(), Codec(model.cfg), convs))
            shown = ckpt.resolve().relative_to(ROOT) if ckpt.resolve().is_relative_to(ROOT) else ckpt.name
            header.append(f"{split}: `{shown}`")
            notes.append(f"{split}: {len(convs)} conversations, model streamed in {time.perf_counter() - t0:.0f} s")
        columns.append(run_cascade(convs))
        header.append(f"{split}: cascade (VAD + frame-difference counter)")
        columns.append(score_actions("oracle", convs, [oracle_said(c) for c in convs]))
        header.append(f"{split}: target track")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(columns)]
    table = "\n".join(lines)
    print(table)
    summary = (
        f"Corpus `{args.corpus.name}`; {'; '.join(notes)}. A question counts only when the first utterance within "
        "5 s of its end holds exactly the count and no other number. The cascade peer answers when the question's "
        "turn ends (silero-vad, 500 ms of silence, or the end of the typed question) with the bursts of "
        "frame-to-frame change it counted, not knowing which shape is the actor. The target track is the corpus's "
        "ground truth."
    )
    if not args.no_write:
        write_result(args.name, args.title, table, f"{summary} {args.note}".strip())


if __name__ == "__main__":
    main()
