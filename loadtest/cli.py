"""``duplex loadtest``: real-time Locust conversations against the front door, gated on the turn-taking SLO.

Exit status: 0 every target held; 1 a target was breached (each named); 2 bad settings or Locust failed;
3 the clients fell behind real time, so the run is not reported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import report
from .preflight import check_target
from .record import RunConfig
from .run import (
    Capacity,
    LoadSpec,
    LocustFailed,
    Step,
    find_capacity,
    parse_duration,
    replicas_from_metrics,
    run_locust,
)

EXIT_BREACH, EXIT_USAGE, EXIT_LAG = 1, 2, 3
console = Console(stderr=True)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    console.print(f"duplex loadtest: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def _table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"{stats.get('users')} users → {stats.get('target')}", show_header=False)

    def s(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f} s"

    rows = [
        ("turn-taking p50 / p95", f"{s(stats['turn_latency_p50'])} / {s(stats['turn_latency_p95'])}"),
        ("barge-in p50", s(stats["barge_in_p50"])),
        ("turns (missed)", f"{stats['turns']} ({stats['turns_missed']})"),
        ("barge-ins (ignored)", f"{stats['barge_ins']} ({stats['barge_ins_ignored']})"),
        ("back-channels", str(stats["backchannels"])),
        ("conversations / errors", f"{stats['conversations_started']} / {stats['errors']}"),
        ("client lag max", s(stats["client_lag_max"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def _one_run(spec: LoadSpec, meta: dict[str, Any], label: str) -> dict[str, Any]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task(label, total=spec.run_time_s)
        record = run_locust(spec, on_tick=lambda t: progress.update(task, completed=min(t, spec.run_time_s)))
    return report.summarise(record, **meta)


def _verdict(stats: dict[str, Any], targets: report.Targets) -> tuple[int, list[str]]:
    lag = report.lag_verdict(stats, targets)
    if lag is not None:
        return EXIT_LAG, [lag]
    found = report.breaches(stats, targets)
    return (EXIT_BREACH if found else 0), found


def loadtest(
    target: str = typer.Option("", help="Gateway (or engine) HOST:PORT"),
    users: int = typer.Option(8, min=1, help="Concurrent conversations (the first step of --find-capacity)"),
    spawn_rate: float = typer.Option(4.0, min=0.01, help="Users started per second"),
    run_time: str = typer.Option("60s", help="Length of the run (of each step of --find-capacity): 60s, 2m"),
    slo_p50: float | None = typer.Option(0.40, help="Target: turn-taking latency p50, seconds"),
    slo_p95: float | None = typer.Option(None, help="Target: turn-taking latency p95, seconds"),
    slo_barge_in_p50: float | None = typer.Option(None, help="Target: barge-in latency p50, seconds"),
    max_error_rate: float | None = typer.Option(0.01, help="Target: share of conversations ending in an error"),
    max_client_lag: float = typer.Option(0.1, help="Refuse the run when a client sent a chunk this late (s)"),
    json_out: Path | None = typer.Option(None, "--json", help="Write the figures (stats.json)"),
    html: Path | None = typer.Option(None, help="Write Locust's HTML report"),
    plot: Path | None = typer.Option(None, help="Write a PNG: latency over time and its histogram"),
    ca_cert: Path | None = typer.Option(
        None, "--ca-cert", metavar="FILE", exists=True, dir_okay=False, help="PEM CA bundle: connect with TLS"
    ),
    api_key: str = typer.Option(
        os.environ.get("DUPLEX_API_KEY", ""), help="API key (or $DUPLEX_API_KEY)", show_default=False
    ),
    corpus: Path | None = typer.Option(
        None, file_okay=False, help="Corpus (duplex corpus make); default: a small one built on first use"
    ),
    split: str | None = typer.Option(None, help="Use only this split of --corpus"),
    min_conversation_s: float = typer.Option(
        0.0,
        min=0.0,
        help="Only conversations at least this long (s); without --corpus a long default corpus is built (once)",
    ),
    chunk_ms: int = typer.Option(200, help="Chunk length (must match the server)"),
    processes: int = typer.Option(
        1, min=1, help="Locust processes sharing the users, a core each (keeps a big load's clients in real time)"
    ),
    seed: int = typer.Option(0, help="User i starts with conversation SEED + i of the corpus"),
    find_capacity: bool = typer.Option(False, help="Ramp users (double, then bisect) until the SLO breaks"),
    max_users: int = typer.Option(256, min=1, help="--find-capacity: never run more users than this"),
    max_steps: int = typer.Option(8, min=1, help="--find-capacity: at most this many runs"),
    replicas: int = typer.Option(0, min=0, help="Engine replicas behind --target (0: from --metrics-url, else 1)"),
    metrics_url: str = typer.Option("", help="The session picker's Prometheus URL, to read its healthy replicas"),
    rescore: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="Gate a stats.json written earlier against these targets; no load"
    ),
) -> None:
    """Hold real-time conversations against a deployment and fail when the latency SLO is breached."""
    targets = report.Targets(slo_p50, slo_p95, slo_barge_in_p50, max_error_rate, max_client_lag)
    if rescore is not None:
        stats = json.loads(rescore.read_text())
        stats.pop("capacity", None)  # re-gate the run's own figures (of a search: the capacity's run)
        _finish(stats, targets, json_out, plot)
        return
    if not target:
        raise _fail("--target HOST:PORT is required (the front door, e.g. the address `duplex up` prints)")
    try:
        run_time_s = parse_duration(run_time)
        if corpus is None:
            from .corpus import default_corpus

            with console.status("building the default load-test corpus (espeak-ng, once)…"):
                corpus = default_corpus(min_conversation_s)
        from .corpus import load_corpus

        load_corpus(corpus, split, min_conversation_s)  # fail here, naming --corpus, not in every Locust user
        with console.status(f"opening one conversation with {target}…"):
            check_target(target, str(ca_cert) if ca_cert else None, api_key, chunk_ms)
    except ValueError as e:
        raise _fail(str(e)) from None
    config = RunConfig(
        corpus=str(corpus),
        split=split,
        min_conversation_s=min_conversation_s,
        chunk_ms=chunk_ms,
        ca_cert=str(ca_cert) if ca_cert else None,
        record="",
        seed=seed,
    )

    def spec(n: int, html_path: Path | None) -> LoadSpec:
        return LoadSpec(target, n, spawn_rate, run_time_s, config, html_path, api_key, min(processes, n))

    meta = {
        "target": target,
        "run_time_s": run_time_s,
        "spawn_rate": spawn_rate,
        "chunk_ms": chunk_ms,
        "corpus": str(corpus),
        "min_conversation_s": min_conversation_s,
    }
    try:
        if not find_capacity:
            stats = _one_run(spec(users, html), {**meta, "users": users}, f"{users} users")
        else:
            stats = _capacity(spec, meta, targets, users, max_users, max_steps, replicas, metrics_url, html)
    except (LocustFailed, ValueError, OSError) as e:
        raise _fail(str(e)) from None
    _finish(stats, targets, json_out, plot)


def _capacity(
    spec: Any,
    meta: dict[str, Any],
    targets: report.Targets,
    start: int,
    max_users: int,
    max_steps: int,
    replicas: int,
    metrics_url: str,
    html: Path | None,
) -> dict[str, Any]:
    if replicas == 0:
        replicas = replicas_from_metrics(metrics_url) if metrics_url else 1
    runs: dict[int, dict[str, Any]] = {}

    def step(n: int) -> Step:
        stats = _one_run(spec(n, None), {**meta, "users": n}, f"capacity step: {n} users")
        code, reasons = _verdict(stats, targets)
        runs[n] = stats
        console.print(f"  {n:4d} users: " + ("pass" if code == 0 else "; ".join(reasons)), markup=False)
        return Step(n, code == 0, code != EXIT_LAG, stats)

    found: Capacity = find_capacity(step, start, max_users, max_steps, replicas)
    console.print(
        f"capacity: {found.users} users ({found.per_replica:g} per replica, {replicas} replica(s)); "
        f"search stopped by {found.limited_by}",
        markup=False,
    )
    best = runs.get(found.users) or next(iter(runs.values()))
    if html is not None and found.users:
        run_locust(spec(found.users, html))  # the report of the capacity found, as a run of its own
    return {
        **best,
        "capacity": {
            "users": found.users,
            "replicas": replicas,
            "per_replica": found.per_replica,
            "limited_by": found.limited_by,
            "steps": [
                {
                    "users": s.users,
                    "passed": s.passed,
                    "valid": s.valid,
                    "turn_latency_p50": s.stats.get("turn_latency_p50"),
                    "turn_latency_p95": s.stats.get("turn_latency_p95"),
                    "barge_in_p50": s.stats.get("barge_in_p50"),
                    "error_rate": s.stats.get("error_rate"),
                    "client_lag_max": s.stats.get("client_lag_max"),
                }
                for s in found.steps
            ],
        },
    }


def _finish(stats: dict[str, Any], targets: report.Targets, json_out: Path | None, plot: Path | None) -> None:
    code, reasons = _verdict(stats, targets)
    stats = {**stats, "valid": code != EXIT_LAG, "breaches": reasons if code == EXIT_BREACH else []}
    if json_out is not None:
        json_out.write_text(json.dumps(stats, indent=1) + "\n")
    if code == EXIT_LAG:
        raise _fail(f"run not reported: {reasons[0]}", EXIT_LAG)
    console.print(_table(stats))
    if plot is not None:
        report.plot(plot, stats, targets)
    capacity = stats.get("capacity")
    if capacity is not None:
        # the capacity's own gate is the search: the best step passed by construction (or nothing passed)
        code = 0 if capacity["users"] > 0 else EXIT_BREACH
        reasons = [] if code == 0 else ["no concurrency held the SLO, not even the first step"]
    for r in reasons:
        console.print(f"SLO breached: {r}", markup=False, highlight=False)
    if code:
        raise typer.Exit(code)
    console.print("SLO held", markup=False)


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest)
