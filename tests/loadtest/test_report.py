"""Summary, SLO verdicts and the capacity search on synthetic records (no load, no clock)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from duplex.loadtest.record import merge
from duplex.loadtest.report import Targets, breaches, lag_verdict, summarise
from duplex.loadtest.run import Step, find_capacity, parse_duration


def record(
    turns: list[float],
    barge_ins: Sequence[float] = (),
    missed: int = 0,
    errors: tuple[str, ...] = (),
    started: int = 10,
    lag_max: float = 0.01,
) -> dict[str, Any]:
    events = [
        {"t": float(i), "type": "turn", "name": "turn-taking", "value_s": v, "failure": None}
        for i, v in enumerate(turns)
    ]
    events += [{"t": 1.0, "type": "barge_in", "name": "stop", "value_s": v, "failure": None} for v in barge_ins]
    events += [{"t": 2.0, "type": "turn", "name": "turn-taking", "value_s": 0.0, "failure": "no reply"}] * missed
    events += [{"t": 3.0, "type": "error", "name": code, "value_s": 1.0, "failure": f"{code}: x"} for code in errors]
    events += [{"t": 4.0, "type": "backchannel", "name": "backchannel", "value_s": 0.0, "failure": None}]
    return {
        "events": events,
        "conversations_started": started,
        "conversations_finished": started - len(errors),
        "warnings": 0,
        "chunks_sent": 100,
        "client_lag_max": lag_max,
        "client_lag_p99": lag_max / 2,
        "client_lag_worst": [],
        "duration_s": 20.0,
    }


def test_summary_holds_the_figures_the_gate_reads() -> None:
    stats = summarise(
        record([0.3, 0.5, 0.4, 0.35, 2.0], barge_ins=[0.2, 0.3], missed=2, errors=("UNAVAILABLE",)),
        users=8,
        target="h:1",
    )
    assert stats["users"] == 8 and stats["target"] == "h:1"
    assert stats["turns"] == 5 and stats["turns_missed"] == 2
    assert stats["turn_latency_p50"] == pytest.approx(0.4)
    assert 0.5 < stats["turn_latency_p95"] <= 2.0
    assert stats["barge_in_p50"] == pytest.approx(0.25)
    assert stats["errors"] == 1 and stats["error_rate"] == pytest.approx(0.1)
    assert stats["error_codes"] == ["UNAVAILABLE"]
    assert stats["backchannels"] == 1
    assert len(stats["samples"]) == 7  # the measured turns and barge-ins, for the plot


def test_each_breached_target_is_named() -> None:
    stats = summarise(record([0.3, 0.5, 0.6], barge_ins=[0.4], errors=("UNAVAILABLE", "UNAVAILABLE")))
    found = breaches(stats, Targets(turn_p50_s=0.4, turn_p95_s=0.45, barge_in_p50_s=0.25, max_error_rate=0.1))
    assert [b.split()[0] for b in found] == ["turn_latency_p50", "turn_latency_p95", "barge_in_p50", "error_rate"]
    assert "UNAVAILABLE" in found[3]
    assert breaches(stats, Targets(turn_p50_s=1.0, turn_p95_s=1.0, barge_in_p50_s=1.0, max_error_rate=0.5)) == []


def test_a_target_with_nothing_measured_fails() -> None:
    found = breaches(summarise(record([0.3])), Targets(turn_p50_s=0.4, barge_in_p50_s=0.25))
    assert found == ["barge_in_p50: no barge-ins measured, the target 0.250 s cannot be checked"]


def test_a_run_whose_clients_fell_behind_is_refused() -> None:
    assert lag_verdict(summarise(record([0.3], lag_max=0.05)), Targets(max_client_lag_s=0.1)) is None
    verdict = lag_verdict(summarise(record([0.3], lag_max=0.25)), Targets(max_client_lag_s=0.1))
    assert verdict is not None and verdict.startswith("client_lag_max 0.250 s > 0.100 s")


def test_capacity_search_doubles_then_bisects_to_the_largest_passing_count() -> None:
    tried: list[int] = []

    def run(n: int) -> Step:
        tried.append(n)
        return Step(n, passed=n <= 37)

    found = find_capacity(run, start=1, max_users=256, max_steps=20, replicas=2)
    assert found.users == 37 and found.per_replica == 18.5 and found.limited_by == "breach"
    assert tried == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]


def test_capacity_search_is_bounded_by_steps_users_and_client_lag() -> None:
    assert find_capacity(lambda n: Step(n, True), 4, 256, 3, 1).limited_by == "max-steps"
    capped = find_capacity(lambda n: Step(n, True), 4, 20, 10, 1)
    assert (capped.users, capped.limited_by, [s.users for s in capped.steps]) == (20, "max-users", [4, 8, 16, 20])
    lagging = find_capacity(lambda n: Step(n, True, valid=n < 16), 4, 256, 10, 1)
    assert (lagging.users, lagging.limited_by) == (8, "client-lag")
    assert find_capacity(lambda n: Step(n, False), 1, 256, 10, 1).users == 0
    with pytest.raises(ValueError, match="--users"):
        find_capacity(lambda n: Step(n, True), 0, 256, 10, 1)


@pytest.mark.parametrize(("text", "seconds"), [("60", 60), ("60s", 60), ("2m", 120), ("1m30s", 90), ("1h", 3600)])
def test_run_time_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m"])
def test_bad_run_time_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--run-time"):
        parse_duration(text)


def process_record(started_unix: float, turns: list[float], lag_max: float, cpu: float) -> dict[str, Any]:
    r = record(turns, lag_max=lag_max)
    return {
        **r,
        "format": "duplex-loadtest-record/1",
        "started_unix": started_unix,
        "client_lag_worst": [{"t": 1.0, "lag_s": lag_max}],
        "generator_cpu_share": cpu,
        "generator_stall_max": lag_max / 2,
        "generator_stall_p99": lag_max / 4,
    }


def test_records_of_several_processes_merge_on_one_clock() -> None:
    a = process_record(1000.0, [0.3, 0.4], lag_max=0.02, cpu=0.5)
    b = process_record(1000.5, [0.5], lag_max=0.07, cpu=0.6)
    merged = merge([a, b])
    assert merged["processes"] == 2
    assert merged["started_unix"] == 1000.0 and merged["duration_s"] == pytest.approx(20.5)
    turn_times = [e["t"] for e in merged["events"] if e["type"] == "turn" and e["failure"] is None]
    assert turn_times == [0.0, 0.5, 1.0]  # b's first turn (its t=0) is 0.5 s after a's start
    assert merged["client_lag_max"] == 0.07 and merged["client_lag_worst"][0] == {"t": 1.5, "lag_s": 0.07}
    assert merged["conversations_started"] == 20 and merged["chunks_sent"] == 200
    assert merged["generator_cpu_share"] == pytest.approx(1.1)
    stats = summarise(merged, users=2)
    assert stats["turns"] == 3 and stats["processes"] == 2


def test_a_lag_refusal_says_whether_the_generator_was_busy() -> None:
    busy = summarise(process_record(0.0, [0.3], lag_max=0.3, cpu=0.95))
    idle = summarise(process_record(0.0, [0.3], lag_max=0.3, cpu=0.3))
    targets = Targets(0.4, None, None, None, 0.1)
    assert "busy: the lag is the generator's" in (lag_verdict(busy, targets) or "")
    assert "descheduled" in (lag_verdict(idle, targets) or "")
    assert "--processes" in (lag_verdict(idle, targets) or "")
