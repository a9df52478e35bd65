"""From a Locust record to ``stats.json``, the SLO verdict and the latency picture (pure but for the plot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Targets:
    """The SLO a run is gated on; None = not checked."""

    turn_p50_s: float | None = 0.40
    """Turn-taking latency, median (``--slo-p50``)."""
    turn_p95_s: float | None = None
    """Turn-taking latency, 95th percentile (``--slo-p95``)."""
    barge_in_p50_s: float | None = None
    """Barge-in latency, median (``--slo-barge-in-p50``)."""
    max_error_rate: float | None = 0.01
    """Conversations ending in a stream error, as a share of those started (``--max-error-rate``)."""
    max_client_lag_s: float = 0.1
    """Largest send delay of a client behind its microphone schedule for the run to count at all."""


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(record: dict[str, Any], **meta: Any) -> dict[str, Any]:
    """The figures of one run (the ``stats.json`` body); ``meta`` (target, users, …) is copied in."""
    events = record["events"]

    def values(kind: str) -> list[float]:
        return [e["value_s"] for e in events if e["type"] == kind and e["failure"] is None]

    turns, barge_ins = values("turn"), values("barge_in")
    errors = [e for e in events if e["type"] == "error"]
    started = record["conversations_started"]
    return {
        **meta,
        "turn_latency_p50": _percentile(turns, 50),
        "turn_latency_p95": _percentile(turns, 95),
        "turn_latency_mean": float(np.mean(turns)) if turns else None,
        "barge_in_p50": _percentile(barge_ins, 50),
        "barge_in_p95": _percentile(barge_ins, 95),
        "turns": len(turns),
        "turns_missed": sum(e["type"] == "turn" and e["failure"] is not None for e in events),
        "barge_ins": len(barge_ins),
        "barge_ins_ignored": sum(e["type"] == "barge_in" and e["failure"] is not None for e in events),
        "backchannels": sum(e["type"] == "backchannel" for e in events),
        "errors": len(errors),
        "error_codes": sorted({e["name"] for e in errors}),
        "error_rate": len(errors) / started if started else 0.0,
        "conversations_started": started,
        "conversations_finished": record["conversations_finished"],
        "warnings": record["warnings"],
        "chunks_sent": record["chunks_sent"],
        "client_lag_max": record["client_lag_max"],
        "client_lag_p99": record["client_lag_p99"],
        "client_lag_worst": record["client_lag_worst"],
        # older records (and synthetic ones) lack the generator's own figures
        "generator_cpu_share": record.get("generator_cpu_share"),
        "generator_stall_max": record.get("generator_stall_max"),
        "generator_stall_p99": record.get("generator_stall_p99"),
        "processes": record.get("processes", 1),
        "duration_s": record["duration_s"],
        "samples": [
            {k: e[k] for k in ("t", "type", "value_s")}
            for e in events
            if e["type"] in ("turn", "barge_in") and e["failure"] is None
        ],
    }


BUSY_SHARE = 0.8
"""A load-generator process using more of a core than this is saturated (its own work makes it late)."""


def _generator_note(stats: dict[str, Any]) -> str:
    """What the generator's own figures say about whose lag it was."""
    cpu, stall = stats.get("generator_cpu_share"), stats.get("generator_stall_max")
    if cpu is None or stall is None:
        return ""
    per_process = cpu / max(1, int(stats.get("processes") or 1))
    why = "busy: the lag is the generator's" if per_process > BUSY_SHARE else "descheduled: too few cores"
    return f"its own event loop stalled up to {stall:.3f} s at {per_process:.0%} of a core per process ({why}); "


def lag_verdict(stats: dict[str, Any], targets: Targets) -> str | None:
    """Why the run cannot be reported (its clients fell behind their microphone), or None."""
    lag = float(stats["client_lag_max"])
    if lag > targets.max_client_lag_s:
        return (
            f"client_lag_max {lag:.3f} s > {targets.max_client_lag_s:.3f} s: the load generator fell behind "
            "real time, so its latencies are not a listener's; "
            + _generator_note(stats)
            + "use fewer users per load-test process (--processes N spreads them over N), or a load-test "
            "machine of its own"
        )
    return None


def breaches(stats: dict[str, Any], targets: Targets) -> list[str]:
    """Every target the run breached, each naming its figure; a target with nothing measured is breached too
    (a gate that passes without evidence is no gate)."""
    out = []
    checks = (
        ("turn_latency_p50", targets.turn_p50_s, "turns"),
        ("turn_latency_p95", targets.turn_p95_s, "turns"),
        ("barge_in_p50", targets.barge_in_p50_s, "barge-ins"),
    )
    for key, limit, what in checks:
        if limit is None:
            continue
        value = stats[key]
        if value is None:
            out.append(f"{key}: no {what} measured, the target {limit:.3f} s cannot be checked")
        elif value > limit:
            out.append(f"{key} {value:.3f} s > target {limit:.3f} s")
    if targets.max_error_rate is not None and stats["error_rate"] > targets.max_error_rate:
        codes = ", ".join(stats["error_codes"])
        out.append(
            f"error_rate {stats['error_rate']:.3f} ({stats['errors']} of {stats['conversations_started']} "
            f"conversations: {codes}) > target {targets.max_error_rate:.3f}"
        )
    return out


def plot(path: Path, stats: dict[str, Any], targets: Targets) -> None:
    """Latency over the run (turn-taking and barge-in, with the targets) and the turn-latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (over_time, hist) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    for kind, color, label in (("turn", "tab:blue", "turn-taking"), ("barge_in", "tab:red", "barge-in")):
        pts = [(s["t"], s["value_s"]) for s in stats["samples"] if s["type"] == kind]
        if pts:
            t, v = zip(*pts, strict=True)
            over_time.scatter(t, v, s=8, color=color, label=f"{label} ({len(pts)})")
    for limit, style, label in ((targets.turn_p50_s, "--", "p50 target"), (targets.turn_p95_s, ":", "p95 target")):
        if limit is not None:
            over_time.axhline(limit, color="tab:blue", ls=style, lw=1, label=label)
            hist.axvline(limit, color="k", ls=style, lw=1, label=label)
    over_time.set_xlabel("seconds since the run started")
    over_time.set_ylabel("latency (s)")
    over_time.set_title(f"{stats.get('users', '?')} users → {stats.get('target', '?')}")
    over_time.legend(loc="upper right", fontsize=8)
    turns = [s["value_s"] for s in stats["samples"] if s["type"] == "turn"]
    hist.hist(turns, bins=30, color="tab:blue")
    p50, p95 = stats["turn_latency_p50"], stats["turn_latency_p95"]
    title = f"turn-taking: p50 {p50:.3f} s, p95 {p95:.3f} s" if p50 is not None else "turn-taking: no turns"
    hist.set_title(title, fontsize=10)
    hist.set_xlabel("turn-taking latency (s)")
    hist.set_ylabel("turns")
    if turns:
        hist.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
