"""What one absent member costs its cohort-mates in the step planner: a fake-clock replay, no model, no gRPC.

    python bench/probes/planner_replay.py            # a member parked (its client vanished) for 10 s
    python bench/probes/planner_replay.py --stall    # a member still connected but silent for 10 s

16 steered sessions in 4 cohorts send every chunk exactly on their phase hint; from 2 s in, one member of
cohort 0 sends nothing for 10 s (told to the planner as parked, unless ``--stall``). Each planned step is
taken to compute for ``--compute-ms``. Printed: the queue wait (chunk received → its step planned) of the
other members of cohort 0 while it is away (from 0.5 s after it left), and of everyone else, and the steps by
kind. Run it with another checkout's interpreter to compare planners (it uses only the planner's public API;
``park`` where the planner has it).
"""

from __future__ import annotations

import argparse

import numpy as np

from duplex.model.family_duplex import ByteTextDecoder
from duplex.serving.engine.planner import StepPlanner
from duplex.serving.engine.session import Conversation, InputChunk
from duplex.serving.spec import EngineSpec

T0 = 100.0
PERIOD_S = 0.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stall", action="store_true", help="the absent member stays connected (not parked)")
    ap.add_argument("--compute-ms", type=float, default=6.0, help="time each planned step takes")
    ap.add_argument("--load", type=float, default=0.2, help="step-thread load the planner is told")
    args = ap.parse_args()
    spec = EngineSpec(host="127.0.0.1", metrics_port=0, max_sessions=16, cohorts=4)
    planner = StepPlanner(spec, PERIOD_S, T0, 0)
    sessions = [Conversation(f"s{i}", 3200, 640, 20, text=ByteTextDecoder(257)).slot_session for i in range(16)]
    first = [planner.reserve(s, not_before=T0 + 0.05 + 0.01 * i) for i, s in enumerate(sessions)]
    arrivals = sorted((at + k * PERIOD_S, i, k) for i, at in enumerate(first) if at is not None for k in range(70))
    gone_at, back_at, end = T0 + 2.0, T0 + 12.0, T0 + 14.0
    absent: int | None = None
    waits: dict[str, list[float]] = {"cohort-mates": [], "others": []}
    kinds = {"regular": 0, "catchup": 0, "split": 0}
    now, next_arrival = T0, 0
    while now < end:
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now:
            t, i, k = arrivals[next_arrival]
            next_arrival += 1
            if i != absent or not gone_at <= t < back_at:
                planner.add_chunk(sessions[i], InputChunk(k, b"", 0, t, 0))
        if absent is None and now >= gone_at:
            absent = next(i for i, s in enumerate(sessions) if s.cohort == 0)
            if not args.stall and hasattr(planner, "park"):
                planner.park(sessions[absent])
        planner.housekeeping(now)
        plan, wake = planner.next_step(now, args.load)
        if plan is not None:
            kinds[plan.kind] += 1
            for row in plan.rows:
                if row is None or row.chunk is None or absent is None:
                    continue
                s = row.conversation.slot_session
                if s is not sessions[absent] and gone_at + 0.5 <= row.chunk.recv_mono < back_at:
                    key = "cohort-mates" if s.cohort == sessions[absent].cohort else "others"
                    waits[key].append((plan.planned_at - row.chunk.recv_mono) * 1e3)
            now += args.compute_ms / 1000
            continue
        upcoming = arrivals[next_arrival][0] if next_arrival < len(arrivals) else end
        now = upcoming if wake is None else min(upcoming, wake)
    how = "stalled (connected)" if args.stall else "parked"
    for key, xs in waits.items():
        p50, p99 = np.percentile(xs, [50, 99])
        print(f"{how} member, {key}: {len(xs)} chunks, queue wait p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print("steps by kind:", kinds)


if __name__ == "__main__":
    main()
