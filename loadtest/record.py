"""What passes between ``duplex loadtest`` and its Locust process: the run's settings in, the record out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict


class RunConfig(BaseModel):
    """Settings of the Locust process (written as JSON by ``duplex loadtest``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    corpus: str
    """Corpus folder (``duplex corpus make`` layout) the users take their conversations from."""
    split: str | None = None
    """Use only this split of the corpus (None = every conversation)."""
    min_conversation_s: float = 0.0
    """Use only conversations whose user track lasts at least this long (seconds)."""
    chunk_ms: int = 200
    """Micro-turn length; must equal the server's."""
    ca_cert: str | None = None
    """PEM CA bundle: connect with TLS verified against it (None = plaintext)."""
    record: str
    """Where the Locust process writes its record (JSON) when it quits."""
    seed: int = 0
    """User i starts with conversation ``seed + i`` of the corpus and goes on in corpus order."""
    processes: int = 1
    """Locust processes sharing the users (``--processes``): user k of process w is user ``k·processes + w``."""


@dataclass
class Recorder:
    """Collects one Locust process's events (single process: greenlets share it without locks)."""

    started: float = field(default_factory=time.time)
    """When the users began (Locust's ``test_start``); event times count from here."""
    stopped: float | None = None
    """When Locust began stopping the users (``test_stopping``): later lags are its shutdown's, not pacing."""
    events: list[tuple[float, str, str, float, str | None]] = field(default_factory=list)
    """(seconds since the start, request type, name, value in seconds, failure message or None)."""
    lags: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, send delay behind the due time in seconds) of every chunk."""
    loop_stalls: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, how late the generator's own 50 ms ticker woke): its event loop's stalls,
    the share of a send's lag that is the load generator's (busy or descheduled), not the server's."""
    cpu_at_start: float = 0.0
    """The process's CPU time at the start (``time.process_time``)."""
    conversations_started: int = 0
    conversations_finished: int = 0
    warnings: int = 0

    def request(self, request_type: str, name: str, value_s: float, exception: BaseException | None) -> None:
        self.events.append(
            (time.time() - self.started, request_type, name, value_s, None if exception is None else str(exception))
        )

    def start(self) -> None:
        self.started = time.time()
        self.cpu_at_start = time.process_time()

    def loop_stall(self, seconds: float) -> None:
        if self.stopped is None:
            self.loop_stalls.append((time.time() - self.started, seconds))

    def stop(self) -> None:
        self.stopped = time.time()

    def lag(self, seconds: float) -> None:
        if self.stopped is None:
            self.lags.append((time.time() - self.started, seconds))

    def to_json(self) -> dict[str, Any]:
        lags = np.asarray([lag for _, lag in self.lags] or [0.0])
        worst = sorted(self.lags, key=lambda tl: -tl[1])[:10]
        stalls = np.asarray([s for _, s in self.loop_stalls] or [0.0])
        duration = (self.stopped or time.time()) - self.started
        return {
            "format": "duplex-loadtest-record/1",
            "started_unix": self.started,
            "duration_s": duration,
            "events": [
                {"t": round(t, 4), "type": k, "name": n, "value_s": round(v, 6), "failure": f}
                for t, k, n, v, f in self.events
            ],
            "client_lag_max": float(lags.max()),
            "client_lag_p99": float(np.percentile(lags, 99)),
            "client_lag_worst": [{"t": round(t, 3), "lag_s": round(lag, 4)} for t, lag in worst],
            "chunks_sent": len(self.lags),
            "generator_cpu_share": (time.process_time() - self.cpu_at_start) / max(duration, 1e-9),
            "generator_stall_max": float(stalls.max()),
            "generator_stall_p99": float(np.percentile(stalls, 99)),
            "conversations_started": self.conversations_started,
            "conversations_finished": self.conversations_finished,
            "warnings": self.warnings,
        }


def merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from those of several Locust processes: events and worst lags on the earliest start's
    clock, counts and CPU added up, maxima of the maxima (the p99 of lags and stalls: the largest one's)."""
    t0 = min(r["started_unix"] for r in records)
    end = max(r["started_unix"] + r["duration_s"] for r in records)

    def shifted(r: dict[str, Any], key: str) -> list[dict[str, Any]]:
        return [{**e, "t": round(e["t"] + r["started_unix"] - t0, 4)} for e in r[key]]

    events = sorted((e for r in records for e in shifted(r, "events")), key=lambda e: float(e["t"]))
    worst = sorted((w for r in records for w in shifted(r, "client_lag_worst")), key=lambda w: -float(w["lag_s"]))
    out: dict[str, Any] = {
        "format": records[0]["format"],
        "started_unix": t0,
        "duration_s": end - t0,
        "events": events,
        "client_lag_worst": worst[:10],
        "processes": len(records),
    }
    for key in ("client_lag_max", "client_lag_p99", "generator_stall_max", "generator_stall_p99"):
        out[key] = max(float(r[key]) for r in records)
    for key in ("chunks_sent", "conversations_started", "conversations_finished", "warnings"):
        out[key] = sum(int(r[key]) for r in records)
    out["generator_cpu_share"] = sum(float(r["generator_cpu_share"]) for r in records)
    return out
