"""``duplex loadtest`` as a user runs it: a short headless Locust load against ``duplex up`` (real gRPC on
loopback, the shipped checkpoint, the default corpus built on first use), then the SLO gate both ways."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from duplex.cli import app
from duplex.loadtest.local import DUPLEX, LocalUp

USERS, RUN_TIME_S = 8, 20
CHUNK_S = 0.2
LAG_BOUND_S = 1.0
"""Server, gateway and load generator share this machine's 2 cores here, so a client may be descheduled for
a few hundred ms; the command's default bound (0.1 s) is meant for a load-test machine of its own."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``duplex up --port 0`` in a subprocess; its address from the "ready at" line (read with a deadline)."""
    with LocalUp(tmp_path_factory.mktemp("up") / "up.log") as up:
        yield up.address


@pytest.fixture(scope="module")
def run(gateway: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real load run with loose targets; the default corpus is built into an empty cache on first use."""
    out = tmp_path_factory.mktemp("load")
    env = {**os.environ, "DUPLEX_CACHE": str(out / "cache")}
    r = subprocess.run(
        [
            *DUPLEX,
            "loadtest",
            "--target",
            gateway,
            "--users",
            str(USERS),
            "--spawn-rate",
            str(USERS),
            "--run-time",
            f"{RUN_TIME_S}s",
            "--slo-p50",
            "4.0",
            "--slo-p95",
            "4.9",
            "--max-error-rate",
            "0.2",
            "--max-client-lag",
            str(LAG_BOUND_S),
            "--json",
            str(out / "stats.json"),
            "--html",
            str(out / "report.html"),
            "--plot",
            str(out / "latency.png"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return out, r


@pytest.mark.slow
def test_a_loose_slo_passes_and_the_figures_are_plausible(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, r = run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SLO held" in r.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["turns"] > 0
    assert stats["users"] == USERS
    assert CHUNK_S <= stats["turn_latency_p50"] <= stats["turn_latency_p95"] < 5.0  # a live client's floor
    assert all(CHUNK_S <= s["value_s"] < 5.0 for s in stats["samples"] if s["type"] == "turn")
    assert stats["errors"] == 0 and stats["conversations_started"] >= USERS
    assert 0.0 <= stats["client_lag_max"] <= LAG_BOUND_S
    assert stats["chunks_sent"] >= 0.7 * USERS * stats["duration_s"] / CHUNK_S  # every user streamed at real time
    assert stats["valid"] is True and stats["breaches"] == []
    assert (out / "cache" / "loadtest-corpus-v1" / "manifest.json").is_file()
    assert "turn-taking" in (out / "report.html").read_text()  # Locust's report shows our request types
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_an_impossible_slo_fails_naming_the_target(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    result = CliRunner().invoke(
        app,
        ["loadtest", "--rescore", str(out / "stats.json"), "--slo-p50", "0.001", "--max-client-lag", str(LAG_BOUND_S)],
    )
    assert result.exit_code == 1
    assert re.search(r"SLO breached: turn_latency_p50 \d\.\d{3} s > target 0\.001 s", result.output)
    strict_lag = CliRunner().invoke(app, ["loadtest", "--rescore", str(out / "stats.json"), "--max-client-lag", "0"])
    assert strict_lag.exit_code == 3 and "client_lag_max" in strict_lag.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--users", "2"], "--target"),
        (["--target", "127.0.0.1:1", "--run-time", "soon"], "--run-time"),
        (["--target", "127.0.0.1:1", "--corpus", "."], "--corpus"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(args: list[str], named: str, tmp_path: Path) -> None:
    if "--corpus" in args:
        args = [*args[:-1], str(tmp_path)]  # a folder without manifest.json
    result = CliRunner().invoke(app, ["loadtest", *args])
    assert result.exit_code == 2
    assert named in result.output
