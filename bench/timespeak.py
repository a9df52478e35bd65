"""TimeSpeak accuracy of checkpoints on the splits of a ``duplex corpus make --task timespeak`` corpus, beside
the cascade peer (silero-vad + a turn-based responder with no timer) and the target track, written to
``bench/results/timespeak.json`` (the "TimeSpeak" section of docs/benchmarks.md).

    python bench/timespeak.py --corpus C --split test --split heldout [--checkpoint CKPT ...] [--name N --title T]

Every system is scored by ``duplex.model.timespeak``: a request is correct when each due moment has the right
word within ±0.5 s and no extra TimeSpeak word falls in its window. The model runs offline
(``duplex model eval --task timespeak``), its text placed one chunk late as a listener gets it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, write_result

from duplex.model import checkpoint
from duplex.model.codec import Codec
from duplex.model.data import load_split
from duplex.model.model import DuplexModel
from duplex.model.runtime import SHIPPED
from duplex.model.timespeak import TimeSpeakMetrics
from duplex.model.timespeak_eval import evaluate_offline, oracle_said, run_cascade, score_timespeak, timed_conversations


def fmt(v: object) -> str:
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def rows(columns: list[TimeSpeakMetrics]) -> list[list[str]]:
    out = [
        ["requests", *[str(m.requests) for m in columns]],
        ["**accuracy**", *[f"**{m.accuracy:.3f}**" for m in columns]],
    ]
    for key, label in (
        ("hits", "due moments with the right word on time"),
        ("wrong", "due moments with another word"),
        ("missing", "due moments with no word"),
        ("extra", "extra words (early, late, repeated, after stop)"),
        ("timing_error_abs_p50", "timing error of hits, abs p50 (s)"),
        ("timing_error_abs_p95", "timing error of hits, abs p95 (s)"),
        ("audio_at_due", "due moments where the output audio starts speech (±0.5 s)"),
    ):
        out.append([label, *[fmt(getattr(m, key)) for m in columns]])
    for group, label in (("by_form", "form"), ("by_channel", "request"), ("by_n", "N =")):
        keys = sorted({k for m in columns for k in getattr(m, group)}, key=lambda k: (len(k), k))
        for k in keys:
            cells = [getattr(m, group).get(k) for m in columns]
            out.append(
                [
                    f"accuracy, {label} {k}",
                    *["—" if c is None else f"{c['accuracy']:.3f} ({c['requests']})" for c in cells],
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
    p.add_argument("--name", default="timespeak", help="Result file name under bench/results.")
    p.add_argument("--title", default="TimeSpeak (timed requests)", help="The section's title.")
    p.add_argument("--note", default="", help="A sentence added to the summary (how a checkpoint was made).")
    p.add_argument("--no-write", action="store_true", help="Print the table only.")
    args = p.parse_args()
    splits = args.split or ["test"]
    ckpts = args.checkpoint or [SHIPPED / "tiny.safetensors"]
    header, columns, notes = ["metric"], [], []
    for split in splits:
        convs = timed_conversations(load_split(args.corpus, split))
        for ckpt in ckpts:
            model = checkpoint.load(ckpt)
            assert isinstance(model, DuplexModel)
            t0 = time.perf_counter()
            columns.append(evaluate_offline(model.eval(), Codec(model.cfg), convs))
            shown = ckpt.resolve().relative_to(ROOT) if ckpt.resolve().is_relative_to(ROOT) else ckpt.name
            header.append(f"{split}: `{shown}`")
            notes.append(f"{split}: {len(convs)} conversations, model streamed in {time.perf_counter() - t0:.0f} s")
        columns.append(run_cascade(convs))
        header.append(f"{split}: cascade (VAD + turn-based, no timer)")
        columns.append(
            score_timespeak("oracle", convs, [oracle_said(c) for c in convs], [c.model.numpy() for c in convs])
        )
        header.append(f"{split}: target track")
    body = rows(columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    table = "\n".join(lines)
    print(table)
    summary = (
        f"Corpus `{args.corpus.name}`; {'; '.join(notes)}. A request counts only when every due moment has its word "
        "within ±0.5 s and no extra TimeSpeak word is said in its window (no partial credit). The cascade peer "
        "knows each request's word and due times but can speak only when a user turn ends (silero-vad, 500 ms "
        "of silence) or a typed text arrives. The target track is the corpus's ground truth."
    )
    if not args.no_write:
        write_result(args.name, args.title, table, f"{summary} {args.note}".strip())


if __name__ == "__main__":
    main()
