"""The repository stands on its own: docs/benchmarks.md is what bench/report.py generates from the committed
result files, and no tracked file points at a path outside the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = ("../shared", "DESIGN.md", "FINDINGS.md", "STYLE.md")
"""How references to the workspace around a checkout were written (this file names them, nothing else may)."""


def test_benchmarks_page_is_generated_from_the_result_files() -> None:
    done = subprocess.run(
        [sys.executable, "bench/report.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    hits = []
    for name in files:
        path = ROOT / name
        if name == this or not path.is_file() or path.suffix in (".safetensors", ".png", ".wav"):
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
    assert not hits, hits
