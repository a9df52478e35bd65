"""Running Locust: one headless run in its own process (gevent's monkey-patching stays out of the CLI), and
the capacity search over such runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import RunConfig, merge

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
EXIT_GRACE_S = 60.0
"""How long past its run time the Locust process may take to stop before it is killed."""


def parse_duration(text: str) -> float:
    """``60``, ``60s``, ``2m``, ``1m30s``, ``1h`` → seconds (Locust's ``--run-time`` forms)."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"--run-time {text!r}: expected e.g. 60s, 2m, 1m30s")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


class LocustFailed(RuntimeError):
    """The Locust process ended without writing its record."""


@dataclass(frozen=True)
class LoadSpec:
    """One headless Locust run."""

    target: str
    """HOST:PORT of the front door (Envoy: what ``duplex up`` prints), or of an engine."""
    users: int
    spawn_rate: float
    run_time_s: float
    config: RunConfig
    html: Path | None = None
    """Locust's own HTML report."""
    api_key: str = ""
    """Passed to the Locust process in its environment, never on its command line."""
    processes: int = 1
    """Locust processes (``--processes``): each runs its share of the users on a core of its own."""


def run_locust(spec: LoadSpec, on_tick: Callable[[float], None] = lambda _: None) -> dict[str, Any]:
    """Run Locust headless to completion and return its record; ``on_tick`` gets the elapsed seconds."""
    with tempfile.TemporaryDirectory(prefix="duplex-loadtest-") as tmp:
        record = Path(tmp) / "record.json"
        config = spec.config.model_copy(update={"record": str(record), "processes": spec.processes})
        config_path = Path(tmp) / "config.json"
        config_path.write_text(config.model_dump_json())
        log_path = Path(tmp) / "locust.log"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "-u",
            str(spec.users),
            "-r",
            str(spec.spawn_rate),
            "-t",
            f"{max(1, round(spec.run_time_s))}s",
            "-H",
            spec.target,
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
        ]
        if spec.html is not None:
            cmd += ["--html", str(spec.html)]
        if spec.processes > 1:
            cmd += ["--processes", str(spec.processes)]
        env = {**os.environ, "DUPLEX_LOADTEST_CONFIG": str(config_path), "DUPLEX_API_KEY": spec.api_key}
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                deadline = spec.run_time_s + EXIT_GRACE_S
                while proc.poll() is None:
                    elapsed = time.monotonic() - started
                    on_tick(elapsed)
                    if elapsed > deadline:
                        proc.kill()
                        break
                    try:
                        proc.wait(timeout=0.25)
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        records = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob(record.name + ".*"))]
        if len(records) != spec.processes:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise LocustFailed(
                f"Locust exited with code {proc.returncode} with {len(records)} of {spec.processes} record(s):\n{tail}"
            )
        return merge(records)


@dataclass(frozen=True)
class Step:
    """One run of the capacity search."""

    users: int
    passed: bool
    """Every target held."""
    valid: bool = True
    """The clients kept real time (else nothing above this load can be measured from this machine)."""
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capacity:
    """Result of the search: the largest concurrency that held the SLO."""

    users: int
    """Largest passing concurrency (0 = even the first step failed)."""
    replicas: int
    steps: tuple[Step, ...]
    limited_by: str
    """Why the search stopped: ``breach``, ``max-users``, ``max-steps`` or ``client-lag``."""

    @property
    def per_replica(self) -> float:
        return self.users / max(1, self.replicas)


def find_capacity(run: Callable[[int], Step], start: int, max_users: int, max_steps: int, replicas: int) -> Capacity:
    """Double the users from ``start`` until the SLO breaks (or ``max_users``), then bisect between the last
    passing and the first failing count, for at most ``max_steps`` runs in all."""
    if not 1 <= start <= max_users:
        raise ValueError(f"--users {start}: the search starts at 1 ≤ users ≤ --max-users ({max_users})")
    passing, failing = 0, None
    steps: list[Step] = []
    n = start
    while len(steps) < max_steps:
        step = run(n)
        steps.append(step)
        if not step.valid:
            return Capacity(passing, replicas, tuple(steps), "client-lag")
        if step.passed:
            passing = n
        else:
            failing = n
        if failing is None:
            if n >= max_users:
                return Capacity(passing, replicas, tuple(steps), "max-users")
            n = min(2 * n, max_users)
        else:
            if failing - passing <= 1:
                return Capacity(passing, replicas, tuple(steps), "breach")
            n = (passing + failing) // 2
    return Capacity(passing, replicas, tuple(steps), "max-steps")


def replicas_from_metrics(url: str) -> int:
    """Healthy engine replicas behind the front door, from the session picker's Prometheus endpoint
    (``duplex_picker_replicas_healthy``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "duplex_picker_replicas_healthy":
            return int(sum(s.value for s in family.samples))
    raise ValueError(f"--metrics-url {url}: no duplex_picker_replicas_healthy metric (is it the session picker's?)")
