"""``duplex corpus``: make a synthetic speech-conversation corpus, and check one."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from duplex.model.corpus.check import check_conversation
from duplex.model.corpus.conversation import Timing
from duplex.model.corpus.make import SPLITS, TASKS, CorpusReport, assign_splits, make_corpus

app = typer.Typer(
    name="corpus",
    help="Synthetic two-party speech conversations (espeak-ng; Flite for the held-out split) for turn-taking.",
    no_args_is_help=True,
)
console = Console()


def _writable_dir(out: Path, force: bool) -> None:
    """Fail early, naming --out, if the corpus cannot be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise typer.BadParameter(f"cannot write to {out}: {err.strerror or err}", param_hint="'--out'") from err
    if (out / "manifest.json").exists() and not force:
        raise typer.BadParameter(
            f"{out} already holds a corpus (manifest.json); pass --force to overwrite it", param_hint="'--out'"
        )


def _range(text: str, hint: str, low: float, high: float = 2.0, unit: str = " seconds") -> tuple[float, float]:
    """Parse MIN,MAX with low <= MIN <= MAX <= high, naming the option when it is not."""
    try:
        lo, hi = (float(x) for x in text.split(","))
        if not low <= lo <= hi <= high:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not MIN,MAX with {low} <= MIN <= MAX <= {high}{unit}", param_hint=hint
        ) from None
    return lo, hi


Out = Annotated[Path, typer.Option("--out", help="Directory to write the corpus into.")]
Conversations = Annotated[int, typer.Option("--conversations", min=1, max=1_000_000, help="Number of conversations.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Corpus seed; same seed, same bytes.")]
Workers = Annotated[int, typer.Option("--workers", min=1, max=256, help="Rendering processes.")]
MinDuration = Annotated[
    float, typer.Option("--min-duration", min=5.0, max=3600.0, help="Shortest conversation, seconds.")
]
MaxDuration = Annotated[
    float, typer.Option("--max-duration", min=5.0, max=3600.0, help="Longest conversation, seconds.")
]
ValidationFraction = Annotated[float, typer.Option("--validation-fraction", min=0.0, max=0.5)]
TestFraction = Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.5)]
HeldoutFraction = Annotated[
    float,
    typer.Option(
        "--heldout-fraction",
        min=0.0,
        max=0.5,
        help="Share of conversations in the 'heldout' split, spoken by Flite (a TTS engine no other split uses).",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing corpus in --out.")]
Task = Annotated[
    str,
    typer.Option(
        "--task",
        help="turns (ordinary turn-taking), timespeak (timed requests, spoken or typed, between ordinary exchanges) "
        "or action-count (a 32x32 video clip of a shape that jumps, blinks or turns 4-10 times beside ordinary "
        "exchanges, then 'How many times did it jump?' spoken or typed, and the count as the answer).",
    ),
]
TimedShare = Annotated[
    float,
    typer.Option(
        "--timed-share",
        min=0.0,
        max=1.0,
        help="With --task timespeak: share of conversations with timed requests (the rest are ordinary).",
    ),
]
TimedMaxN = Annotated[
    int,
    typer.Option(
        "--timed-max-n", min=2, max=30, help="With --task timespeak: the longest delay or period asked for, seconds."
    ),
]
ReplyGap = Annotated[
    str,
    typer.Option("--reply-gap", help="MIN,MAX seconds between the user's end of turn and the target model's reply."),
]
BargeReaction = Annotated[
    str,
    typer.Option(
        "--barge-reaction", help="MIN,MAX seconds from a user's barge-in onset until the target model has stopped."
    ),
]
VoiceWarp = Annotated[
    str,
    typer.Option(
        "--voice-warp",
        help="MIN,MAX factor by which each espeak-ng user voice is played faster (pitch, formants and tempo "
        "scale together): more speakers from the same variants.",
    ),
]


def _check_task(task: str, timed_share: float, timed_max_n: int) -> None:
    """The task exists, and the timespeak-only options are left alone for other tasks."""
    if task not in TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; choose {', '.join(TASKS)}", param_hint="'--task'")
    if timed_share != 1.0 and task != "timespeak":
        raise typer.BadParameter("only with --task timespeak", param_hint="'--timed-share'")
    if timed_max_n != 30 and task != "timespeak":
        raise typer.BadParameter("only with --task timespeak", param_hint="'--timed-max-n'")


@app.command("make")
def make(
    out: Out,
    conversations: Conversations,
    seed: Seed = 0,
    workers: Workers = 2,
    min_duration: MinDuration = 45.0,
    max_duration: MaxDuration = 90.0,
    validation_fraction: ValidationFraction = 0.1,
    test_fraction: TestFraction = 0.1,
    heldout_fraction: HeldoutFraction = 0.1,
    force: Force = False,
    task: Task = "turns",
    timed_share: TimedShare = 1.0,
    timed_max_n: TimedMaxN = 30,
    reply_gap: ReplyGap = "0.15,0.30",
    barge_reaction: BargeReaction = "0.12,0.20",
    voice_warp: VoiceWarp = "1.0,1.0",
) -> None:
    """Render conversations to user.wav / user_clean.wav / model.wav / events.json plus manifest.json."""
    if min_duration > max_duration:
        raise typer.BadParameter(
            f"{min_duration} is longer than --max-duration {max_duration}", param_hint="'--min-duration'"
        )
    try:
        assign_splits(conversations, seed, validation_fraction, test_fraction, heldout_fraction)
    except ValueError as err:
        hint = "'--validation-fraction' / '--test-fraction' / '--heldout-fraction'"
        raise typer.BadParameter(str(err), param_hint=hint) from err
    _check_task(task, timed_share, timed_max_n)
    gap = _range(reply_gap, "'--reply-gap'", 0.0)
    reaction = _range(barge_reaction, "'--barge-reaction'", 0.04)
    warp = _range(voice_warp, "'--voice-warp'", 0.7, 1.4, unit="")
    _writable_dir(out, force)
    timing = Timing(reply_gap=gap, barge_reaction=reaction, voice_warp=warp)
    splits = {"validation_fraction": validation_fraction, "test_fraction": test_fraction}
    tasks = (task, timed_share, timed_max_n)
    report = _render(
        out, conversations, seed, workers, (min_duration, max_duration), timing, heldout_fraction, splits, tasks
    )
    _print_report(report)


def _render(
    out: Path,
    conversations: int,
    seed: int,
    workers: int,
    durations: tuple[float, float],
    timing: Timing,
    heldout_fraction: float,
    splits: dict[str, float],
    tasks: tuple[str, float, int] = ("turns", 1.0, 30),
) -> CorpusReport:
    """``make_corpus`` with a progress bar (conversations done, minutes of audio)."""
    columns = (
        TextColumn("[bold]rendering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[audio]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("conversations", total=conversations, audio="0.0 min audio")
        audio = [0.0]

        def done(entry: dict[str, Any]) -> None:
            audio[0] += float(entry["duration_s"])
            progress.update(task, advance=1, audio=f"{audio[0] / 60:.1f} min audio")

        return make_corpus(
            out,
            conversations,
            seed,
            workers,
            *durations,
            splits["validation_fraction"],
            splits["test_fraction"],
            on_done=done,
            timing=timing,
            heldout_fraction=heldout_fraction,
            task=tasks[0],
            timed_share=tasks[1],
            timed_max_n=tasks[2],
        )


def _print_report(report: CorpusReport) -> None:
    table = Table(title=f"corpus {report.out}")
    for column in ("split", "conversations", "audio (min)", "user voices"):
        table.add_column(column)
    for split in SPLITS:
        row = report.manifest["totals"]["splits"][split]
        table.add_row(split, str(row["conversations"]), f"{row['duration_s'] / 60:.1f}", str(len(row["user_voices"])))
    console.print(table)
    console.print(
        f"{report.audio_seconds:.1f} s of audio in {report.wall_seconds:.1f} s wall, "
        f"{report.worker_cpu_seconds:.1f} CPU-s in workers: "
        f"{report.audio_per_cpu_second:.0f} s of audio per CPU-second"
    )


@app.command("check")
def check(corpus: Annotated[Path, typer.Argument(help="A corpus directory (with manifest.json).")]) -> None:
    """Check that every conversation's labels agree with its audio; exit 1 if any does not."""
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise typer.BadParameter(f"{manifest_path} not found", param_hint="'CORPUS'")
    manifest = json.loads(manifest_path.read_text())
    bad = 0
    for entry in manifest["conversations"]:
        problems = check_conversation(corpus / entry["path"])
        bad += bool(problems)
        for problem in problems:
            console.print(f"[red]{entry['id']}[/red]: {problem}")
    console.print(
        f"{len(manifest['conversations']) - bad} of {len(manifest['conversations'])} conversations agree "
        "with their labels"
    )
    if bad:
        raise typer.Exit(1)
