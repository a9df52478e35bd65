"""e2e on the node: the platform figures that ``tests/e2e/test_platform.py`` records, over several runs.

    python bench/e2e_figures.py --since 2026-12-07T21:30:00Z [--exclude AT,AT] [--write]

Each run of ``tests/e2e/test_platform.py`` appends one line of figures (seconds, from its own monotonic clocks) to
``$DUPLEX_CACHE/e2e-platform-timings.jsonl`` (default ``~/.cache/duplex``): cluster up, image build and import,
operator and DuplexModel Ready, the first answer through Envoy, a Realtime turn with the ``openai`` SDK, turn-taking
through the Service (``duplex loadtest``, 2 users, 60 s), the kill of an engine rank and the recovery, and a Moshi-
family model served from a host-path checkpoint. This script takes the runs recorded at or after ``--since`` (less
``--exclude``, their ``at`` stamps) and prints, per figure, the median, the range and how many runs measured it;
``--write`` puts the table into bench/results/e2e.json and docs/benchmarks.md. The image figures count only runs
whose image was already built (a source change rebuilds the project layer: docs/e2e.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, load, write_doc, write_result

TITLE = "e2e on the node"
FIGURES = (
    ("node up s", "cluster up: control plane, kubelet, node Ready"),
    ("images import s", "project and Redis images imported into containerd"),
    ("operator Ready s", "operator pod Ready after `helm install`"),
    ("DuplexModel Ready s", "DuplexModel created → Ready (2 engine ranks, front, agent)"),
    ("first answer s", "first answer through Envoy: chunk 0 sent → first model audio"),
    ("model speech after the user stopped s", "model speech after the user stopped (one spoken question)"),
    ("realtime turn s", "a Realtime turn with the `openai` SDK (connect → `response.done`)"),
    ("turn-taking p50 s", "turn-taking p50 through the Service (`duplex loadtest`, 2 users, 60 s)"),
    ("turn-taking p95 s", "turn-taking p95, the same run"),
    ("kill to UNAVAILABLE s", "engine rank 0 SIGKILLed → the client's UNAVAILABLE (target ≤ 1 s)"),
    ("recovery after the kill s", "recovery: kill → both ranks ready, DuplexModel Ready"),
    ("moshi DuplexModel Ready s", "Moshi-family DuplexModel (small random checkpoint, host path) created → Ready"),
    ("moshi talk s", "`duplex talk` to it through Envoy (24 kHz, 80 ms chunks), start → end"),
)


def runs(path: Path, since: str, exclude: set[str]) -> list[dict[str, Any]]:
    """The recorded runs at or after ``since`` (ISO-8601 UTC stamps compare as text), less ``exclude``."""
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["at"] >= since and entry["at"] not in exclude:
            out.append(entry)
    return out


def table(entries: list[dict[str, Any]]) -> str:
    lines = ["| figure | median | range | runs |", "|:---|---:|---:|---:|"]
    for key, label in FIGURES:
        values = [float(e[key]) for e in entries if e.get(key) is not None]
        if key == "images import s":
            values = [float(e[key]) for e in entries if e.get(key) is not None and e.get("image cached")]
        if values:
            lo, hi = min(values), max(values)
            lines.append(f"| {label} | {statistics.median(values):.3g} | {lo:.3g}–{hi:.3g} | {len(values)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("DUPLEX_CACHE", Path.home() / ".cache" / "duplex")) / "e2e-platform-timings.jsonl"
    ap.add_argument("--timings", type=Path, default=default, help="the file the e2e test appends to")
    ap.add_argument("--since", required=True, help="first run to take, by its `at` stamp (ISO-8601 UTC)")
    ap.add_argument("--exclude", default="", help="comma-separated `at` stamps of runs to leave out")
    ap.add_argument("--write", action="store_true", help="update bench/results/e2e.json and docs/benchmarks.md")
    args = ap.parse_args()
    entries = runs(args.timings, args.since, {x for x in args.exclude.split(",") if x})
    if not entries:
        sys.exit(f"e2e_figures: no run recorded at or after {args.since} in {args.timings}")
    text = table(entries)
    print(text)
    summary = " ".join(
        [
            f"{len(entries)} runs of `tests/e2e/test_platform.py`, each in a run of the whole suite by",
            "`bash scripts/test.sh`, which runs the end-to-end tests alone on the machine; from the figures the",
            "test records. The chart and the example CPU DuplexModel with 2 engine ranks at `cpu: 500m` each on",
            "the single-node cluster of `tests/e2e/`; everything through real pods, Envoy and the session picker.",
            "Seconds. The import figure counts runs whose image was already built.",
        ]
    )
    if args.write:
        path = write_result("e2e", TITLE, text, summary, cmd=command())
        result = load(path)  # the runs' machine, not this script's moment: the e2e phase ran alone
        result.machine.load = "the end-to-end tests alone on the machine"
        result.machine.torch_threads = None
        path.write_text(result.dumps())
        write_doc()


if __name__ == "__main__":
    main()
