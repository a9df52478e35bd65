"""What the task benchmarks (``timespeak.py``, ``action_count.py``) share: their options, the run of checkpoints
over a corpus's splits beside each split's cascade peer and target track, the table and the result file
(``bench_task``, given a ``Task`` and its ``Scorers``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from report import ROOT, write_result

from duplex.model import checkpoint
from duplex.model.codec import Codec
from duplex.model.data import Conversation, load_split
from duplex.model.model import DuplexModel
from duplex.model.runtime import SHIPPED
from duplex.model.scoring import accuracy_rows


class Figures(Protocol):
    """What a task's scorer gives: a system's figures (``duplex.model.timespeak.TimeSpeakMetrics`` and the like)."""

    system: str
    accuracy: float


M = TypeVar("M", bound=Figures)


@dataclass(frozen=True)
class Task:
    """How a task benchmark shows its figures."""

    name: str
    """The result file's default name under bench/results."""
    title: str
    """The section's default title."""
    count: str
    """The figure that counts what is scored ("requests"): the table's first row and the groups' counts."""
    figures: Sequence[tuple[str, str]]
    """(figure, row label) of the rows after the accuracy."""
    groups: Sequence[tuple[str, str]]
    """(group, row label) of the accuracy-by-group rows (``duplex.model.scoring.accuracy_rows``)."""
    summary: str
    """What the summary says after the corpus and the model runs: the scoring rule, the cascade peer."""


@dataclass(frozen=True)
class Scorers(Generic[M]):
    """How a task benchmark picks and scores a split's conversations."""

    conversations: Callable[[list[Conversation]], list[Conversation]]
    """The conversations of a split that the task scores."""
    evaluate: Callable[[DuplexModel, Codec, list[Conversation]], M]
    """A checkpoint's figures, streamed offline."""
    cascade: Callable[[list[Conversation]], M]
    """The cascade peer's figures (its column is named by their ``system``)."""
    oracle: Callable[[list[Conversation]], M]
    """The target track's figures."""


def fmt(v: object) -> str:
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def options(doc: str | None, task: Task) -> argparse.Namespace:
    """The command line: corpus, splits, checkpoints, and where the result goes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", action="append", default=[], help="Splits to score (default: test).")
    p.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="Checkpoints (default: the shipped one)."
    )
    p.add_argument("--name", default=task.name, help="Result file name under bench/results.")
    p.add_argument("--title", default=task.title, help="The section's title.")
    p.add_argument("--note", default="", help="A sentence added to the summary (how a checkpoint was made).")
    p.add_argument("--no-write", action="store_true", help="Print the table only.")
    return p.parse_args()


def run(args: argparse.Namespace, scorers: Scorers[M]) -> tuple[list[str], list[M], list[str]]:
    """Each split's conversations scored by each checkpoint offline, then by the cascade peer and the target track:
    the header cells, the columns' figures, and a note per model run."""
    header, columns, notes = ["metric"], [], []
    for split in args.split or ["test"]:
        convs = scorers.conversations(load_split(args.corpus, split))
        for ckpt in args.checkpoint or [SHIPPED / "tiny.safetensors"]:
            model = checkpoint.load(ckpt)
            assert isinstance(model, DuplexModel)
            t0 = time.perf_counter()
            columns.append(scorers.evaluate(model.eval(), Codec(model.cfg), convs))
            shown = ckpt.resolve().relative_to(ROOT) if ckpt.resolve().is_relative_to(ROOT) else ckpt.name
            header.append(f"{split}: `{shown}`")
            notes.append(f"{split}: {len(convs)} conversations, model streamed in {time.perf_counter() - t0:.0f} s")
        cascade = scorers.cascade(convs)
        columns.append(cascade)
        header.append(f"{split}: {cascade.system}")
        columns.append(scorers.oracle(convs))
        header.append(f"{split}: target track")
    return header, columns, notes


def rows(task: Task, columns: Sequence[M]) -> list[list[str]]:
    """The table's body: the count, the accuracy (bold), the task's figures, the accuracy by group."""
    return [
        [task.count, *[fmt(getattr(m, task.count)) for m in columns]],
        ["**accuracy**", *[f"**{m.accuracy:.3f}**" for m in columns]],
        *[[label, *[fmt(getattr(m, key)) for m in columns]] for key, label in task.figures],
        *accuracy_rows(columns, task.groups, task.count),
    ]


def bench_task(doc: str | None, task: Task, scorers: Scorers[M]) -> None:
    """A task benchmark's ``main``: print the table; unless ``--no-write``, write it and its summary as the
    result file."""
    args = options(doc, task)
    header, columns, notes = run(args, scorers)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(task, columns)]
    table = "\n".join(lines)
    print(table)
    summary = (
        f"Corpus `{args.corpus.name}`; {'; '.join(notes)}. {task.summary} The target track is the corpus's ground "
        "truth."
    )
    if not args.no_write:
        write_result(args.name, args.title, table, f"{summary} {args.note}".strip())
