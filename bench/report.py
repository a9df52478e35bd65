"""Benchmark result files and the page made of them.

    python bench/report.py           # regenerate docs/benchmarks.md from bench/results/*.json
    python bench/report.py --check   # exit 1 if docs/benchmarks.md is not what the result files give

docs/benchmarks.md is generated: never edit it by hand. Each of its tables is one result file,
``bench/results/NAME.json`` (committed), and the page is those files in ``ORDER`` (then any others by name)
under a fixed header. A benchmark script's ``--write`` (or its default, for the scripts with ``--no-write``)
calls ``write_result``: it replaces the script's result file and regenerates the page.

A result file is one JSON object, ``Result`` below (unknown keys are refused):

    title     the section's heading on the page, unique ("Serving"); README.md and docs/*.md cite it by name
    command   the command line that produced the figures; several run one after another: "A ; B"
    machine   ``Machine``: {"cores": 2, "cpu": "AMD EPYC 9B14", "torch": "2.13.0+cpu", "torch_threads": 2,
              "python": "3.11.7", "load": "load average at the end 1.7, 1.4, 1.2"}: cpu is /proc/cpuinfo's model
              name, load how busy the machine was (or "quiet: nothing else running"); cores and torch_threads
              may be null, the strings empty. No host or VM names, no kernel release (it names the VM).
    date      the day it ran, "YYYY-MM-DD" (no time of day); "" when not known
    columns   the table's header cells (markdown allowed in every cell)
    align     one per column: "l", "r", "c" (markdown's :---, ---:, :---:) or "" (---); [] = all ""
    rows      the table's body: rows of cells, strings exactly as printed ("12.4 / 18.3"), as many as columns
    summary   what the script says besides its table: the run's set-up and its headline figure; markdown,
              paragraphs separated by a blank line; "" for none. Replaced with the figures.
    notes     one short paragraph: what the figures mean; written by hand, "" for none. ``write_result`` keeps
              the notes already in the file when a script replaces its figures: read them against the new ones.

On the page a section is: the heading; a caption line (command, machine, date: the only place they appear)
right above the table; the table; the summary; the notes as "What it means".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"

# the page's order of sections, by result file name; files not listed follow, by name
ORDER = (
    "serving",
    "serving_long_conversations",
    "serving_cohorts_at_64_long_sessions",
    "serving_burst_joins_and_re_aiming",
    "serving_real_speech_against_speech_like_tones",
    "relay_floor",
    "machine_steadiness",
    "load_test",
    "realtime",
    "soak",
    "soak_runs",
    "soak_server",
    "turn_taking",
    "turn_taking_live",
    "turn_taking_heldout",
    "turn_taking_live_heldout",
    "timespeak",
    "timespeak_small_n",
    "action_count",
    "model_step",
    "model_step_moe",
    "model_step_profile",
    "batch_invariance_cost",
    "moshi_cpu",
    "agent",
    "operator",
    "fuzzing",
    "e2e",
    "ci_run",
)

HEADER = """\
# Benchmarks

The project's benchmark figures, one table per benchmark; the line above each table gives the command that
produced it, the machine and the date. This page is generated, so do not edit it: `python bench/report.py` writes
it from the result files in `bench/results/` (one JSON file per table, the format in `bench/report.py`), and a
benchmark script run with `--write` (for some the default: see its `--no-write`) replaces its result file and
regenerates the page. What a figure means goes in its result file's `notes`. Earlier runs, and the investigations
behind the notes, are in the history of `bench/results/` and of this page; one-off probes are in `bench/probes/`.

How to read the figures: they come from small shared virtual machines (2 cores, CPU only, unless the caption
says otherwise) whose speed moves from second to second with their neighbours' load ("Machine steadiness"),
and the load generator usually shares the cores with the server it measures. An absolute time is that run's
on that machine; compare rows of one table (one run), and ratios, not figures across tables or dates. Column
definitions are in the docstring of the script that the command names.
"""


@dataclass
class Machine:
    """What the figures ran on: no host names, VM ids or kernel releases."""

    cores: int | None = None
    cpu: str = ""
    torch: str = ""
    torch_threads: int | None = None
    python: str = ""
    load: str = ""

    def describe(self) -> str:
        parts = []
        if self.cores:
            parts.append(f"{self.cores} cores" + (f" ({self.cpu})" if self.cpu else ""))
        elif self.cpu:
            parts.append(self.cpu)
        if self.torch:
            threads = self.torch_threads
            parts.append(
                f"torch {self.torch}" + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads else "")
            )
        if self.python:
            parts.append(f"Python {self.python}")
        if self.load:
            parts.append(self.load)
        return ", ".join(parts) or "not recorded"


@dataclass
class Result:
    """One table of docs/benchmarks.md: the content of ``bench/results/NAME.json`` (see the module docstring)."""

    title: str
    command: str
    machine: Machine
    date: str
    columns: list[str]
    rows: list[list[str]]
    align: list[str] = field(default_factory=list)
    summary: str = ""
    notes: str = ""

    @classmethod
    def from_json(cls, data: Any, where: str = "result") -> Result:
        """Check the types and the shape; a file that is off is refused naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a JSON object")
        known = {f.name for f in fields(cls)}
        if extra := sorted(set(data) - known):
            raise ValueError(f"{where}: unknown keys {extra}")
        if missing := sorted({"title", "command", "machine", "date", "columns", "rows"} - set(data)):
            raise ValueError(f"{where}: missing keys {missing}")
        for key in ("title", "command", "date", "summary", "notes"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"{where}: {key} must be a string")
        if not data["title"].strip():
            raise ValueError(f"{where}: title is empty")
        m = data["machine"]
        mkeys = {f.name for f in fields(Machine)}
        if not isinstance(m, dict) or set(m) - mkeys:
            raise ValueError(f"{where}: machine must be an object with keys among {sorted(mkeys)}")
        for key in ("cores", "torch_threads"):
            if m.get(key) is not None and (not isinstance(m[key], int) or isinstance(m[key], bool)):
                raise ValueError(f"{where}: machine.{key} must be an integer or null")
        for key in ("cpu", "torch", "python", "load"):
            if not isinstance(m.get(key, ""), str):
                raise ValueError(f"{where}: machine.{key} must be a string")
        columns, rows, align = data["columns"], data["rows"], data.get("align", [])
        if not columns or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"{where}: columns must be a non-empty list of strings")
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError(f"{where}: rows must be a list of lists")
        for i, r in enumerate(rows):
            if len(r) != len(columns) or not all(isinstance(c, str) for c in r):
                raise ValueError(f"{where}: rows[{i}] must be {len(columns)} strings")
        if align and (len(align) != len(columns) or not all(a in ("l", "r", "c", "") for a in align)):
            raise ValueError(f'{where}: align must be one of "l", "r", "c", "" per column')
        return cls(**{**data, "machine": Machine(**m)})

    def dumps(self) -> str:
        """JSON, one row a line."""
        d = asdict(self)
        out = []
        for key in ("title", "command", "machine", "date", "columns", "align", "rows", "summary", "notes"):
            value = d[key]
            if key == "rows":
                body = ",\n".join("    " + json.dumps(r, ensure_ascii=False) for r in value)
                out.append(f'  "rows": [\n{body}\n  ]' if value else '  "rows": []')
            else:
                out.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
        return "{\n" + ",\n".join(out) + "\n}\n"


# --- reading and writing result files -----------------------------------------------------------------------


def result_name(title: str) -> str:
    """The file name a title gets by default: "Serving, long conversations" → serving_long_conversations."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def load(path: Path) -> Result:
    return Result.from_json(json.loads(path.read_text()), str(path))


def load_all(results: Path = RESULTS) -> list[tuple[str, Result]]:
    """Every result file, in the page's order."""
    found = {p.stem: load(p) for p in sorted(results.glob("*.json"))}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return [(n, found[n]) for n in names]


def parse_table(markdown: str) -> tuple[list[str], list[str], list[list[str]]]:
    """Header cells, alignment and rows of the first markdown table in ``markdown`` (as the scripts print it)."""
    lines = [ln.strip() for ln in markdown.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    columns, rule = block[0], block[1]
    rows = [r + [""] * (len(columns) - len(r)) for r in block[2:]]  # markdown lets a row end early
    align = []
    for r in rule:
        left, right = r.startswith(":"), r.endswith(":")
        align.append("c" if left and right else "r" if right else "l" if left else "")
    return columns, (align if any(align) else []), rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> Machine:
    """This machine, as a result file records it."""
    import torch

    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return Machine(
        cores=os.cpu_count(),
        cpu=cpu_model() or platform.machine(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        load=f"load average at the end {load_avg}",
    )


def machine() -> str:
    """One line about this machine, for what the scripts print (and docs/reliability.md)."""
    cpu = cpu_model() or "unknown CPU"
    import torch

    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    # no platform.release(): a kernel release names the virtual machine it ran on
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()}, Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"load average at the end {load_avg}"
    )


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def write_result(
    name: str,
    title: str,
    table: str,
    summary: str = "",
    *,
    cmd: str | None = None,
    results: Path = RESULTS,
    doc: Path = DOC,
) -> Path:
    """Replace ``results/NAME.json`` with this run's table (markdown, as the script prints it), keeping the file's
    notes, and regenerate the page."""
    columns, align, rows = parse_table(table)
    path = results / f"{name}.json"
    notes = load(path).notes if path.exists() else ""
    result = Result(
        title=title,
        command=cmd or command(),
        machine=machine_info(),
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        columns=columns,
        align=align,
        rows=rows,
        summary=summary.strip(),
        notes=notes,
    )
    Result.from_json(json.loads(result.dumps()), str(path))  # the same checks as on reading it back
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(result.dumps())
    write_doc(results, doc)
    return path


def write_section(title: str, body: str, doc: Path) -> None:
    """Replace (or append) the ``## title`` section of a hand-kept document (docs/reliability.md; not this page)."""
    text = doc.read_text()
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    doc.write_text(text)


# --- the page ------------------------------------------------------------------------------------------------


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# a word, a code span with spaces in it counting as part of one
WORD = re.compile(r"(?:[^\s`]*`[^`]*`)+[^\s`]*|\S+")
# a line that starts with one of these would turn into a list, a quote, a heading or a table
BLOCK_START = re.compile(r">|\||([-+*=]+|#+|\d+[.)])$")


def fill(paragraph: str, width: int = 116) -> str:
    """Wrap a paragraph at ``width``, never starting a line with a word that markdown reads as block syntax."""
    lines: list[list[str]] = [[]]
    for word in WORD.findall(paragraph):
        line = lines[-1]
        if line and len(" ".join([*line, word])) > width:
            lines.append([word])
            if BLOCK_START.match(word) and len(line) > 1:
                lines[-1].insert(0, line.pop())
        else:
            line.append(word)
    return "\n".join(" ".join(line) for line in lines)


def wrap(text: str) -> str:
    return "\n\n".join(fill(" ".join(p.split())) for p in text.strip().split("\n\n") if p.strip())


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def section(r: Result) -> str:
    caption = f"Command: `{r.command}` · machine: {r.machine.describe()}" + (f" · {r.date}" if r.date else "")
    rule = {"l": ":---", "r": "---:", "c": ":---:", "": "---"}
    align = r.align or [""] * len(r.columns)
    lines = [
        f"## {r.title}",
        "",
        caption,
        "",
        "| " + " | ".join(cell(c) for c in r.columns) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in r.rows),
    ]
    if r.summary:
        lines += ["", wrap(r.summary)]
    if r.notes:
        lines += ["", wrap("*What it means:* " + r.notes)]
    return "\n".join(lines) + "\n"


def render(results: list[tuple[str, Result]]) -> str:
    titles = [r.title for _, r in results]
    if dup := sorted({t for t in titles if titles.count(t) > 1}):
        raise ValueError(f"two result files with the title {dup}")
    contents = "\n".join(f"- [{r.title}](#{anchor(r.title)})" for _, r in results)
    return HEADER + "\n" + contents + "\n\n" + "\n".join(section(r) for _, r in results)


def write_doc(results: Path = RESULTS, doc: Path = DOC) -> str:
    text = render(load_all(results))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that docs/benchmarks.md is up to date")
    args = ap.parse_args()
    if args.check:
        if not DOC.exists() or DOC.read_text() != render(load_all()):
            sys.exit(f"{DOC.relative_to(ROOT)} is not what bench/results/ gives: run python bench/report.py")
        return
    text = write_doc()
    print(f"wrote {DOC.relative_to(ROOT)}: {len(load_all())} sections, {text.count(chr(10))} lines")


if __name__ == "__main__":
    main()
