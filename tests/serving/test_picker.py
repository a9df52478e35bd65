"""The session picker's decision without Envoy (no I/O: engine reports are set on the replicas as the router
would, time is an injected clock): placement by free slots plus the picker's own placements since each report,
per-key quotas, refusals with the status Envoy hands to the client, resumes routed to their holder. And what a
real engine reports for it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc

from duplex.serving import client
from duplex.serving.envoy.config import CONVERSE_PATH, REPLICA_HEADER, START_ATTEMPTS
from duplex.serving.metrics import PickerMetrics
from duplex.serving.picker.auth import key_line
from duplex.serving.picker.placement import Placements, choose, ranked, sessions_by_key
from duplex.serving.picker.routing import Replica, get_load
from duplex.serving.picker.server import Picker, deny
from duplex.serving.resume_token import (
    HOLDER_LOST_METADATA,
    KEY_ID_METADATA,
    PLACEMENT_METADATA,
    RESUME_REPLICA_METADATA,
)
from duplex.serving.spec import GatewaySpec
from duplex.v1 import duplex_pb2 as pb

from .conftest import Stack, tone

A, B = "127.0.0.1:7001", "127.0.0.1:7002"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def report(r: Replica, active: int, capacity: int = 8, healthy: bool = True, **by_key: int) -> None:
    """What ``Router._poll`` records from a health check and a ``Replica.GetLoad`` answer."""
    r.healthy, r.others, r.capacity, r.by_key = healthy, active, capacity, dict(by_key)


def picker(tmp_path: object, clock: Clock, **settings: object) -> Picker:
    from pathlib import Path

    keys = Path(str(tmp_path)) / "keys"
    keys.write_text(key_line("secret-a", "alice") + "\n" + key_line("secret-b", "bob") + "\n")
    spec = GatewaySpec(host="127.0.0.1", engines=[A, B], api_keys_file=str(keys), metrics_port=0, **settings)
    from duplex.serving.picker.auth import KeyRing

    return Picker(spec, KeyRing.from_file(str(keys)), Placements(clock), PickerMetrics())


def headers(answer: object) -> dict[str, str]:
    ok = answer.ok_response if answer.HasField("ok_response") else answer.denied_response  # type: ignore[attr-defined]
    return {h.header.key: h.header.value for h in ok.headers}


def picked(answer: object) -> str:
    """The engine a new session is placed on: the first of ``REPLICA_HEADER``'s list."""
    return headers(answer)[REPLICA_HEADER].split(",")[0]


ALICE = {"authorization": "Bearer secret-a"}


async def test_a_burst_of_joins_is_spread_by_the_pickers_own_placements(tmp_path: object) -> None:
    clock = Clock()
    p = picker(tmp_path, clock)
    ra, rb = p.router.replicas
    report(ra, 0)
    report(rb, 2)  # B already holds two sessions
    chosen = []
    for _ in range(6):  # no report comes in between: the picker counts what it placed itself
        answer = p.decide(CONVERSE_PATH, ALICE)
        assert answer.status.code == 0
        chosen.append(picked(answer))
    # A fills up to B's two first, then they alternate: 4 on A, 2 on B → 4 and 4 sessions in all
    assert Counter(chosen) == {A: 4, B: 2}
    assert chosen[:2] == [A, A]


async def test_a_report_replaces_exactly_the_placements_it_counts(tmp_path: object) -> None:
    clock = Clock()
    p = picker(tmp_path, clock)
    ra, rb = p.router.replicas
    report(ra, 0)
    report(rb, 0)
    numbers = [headers(p.decide(CONVERSE_PATH, ALICE))[PLACEMENT_METADATA] for _ in range(3)]
    assert numbers == [f"{p.placements.id}.{n}" for n in (1, 2, 3)]  # A, B, A
    assert p.placements.pending() == {A: 2, B: 1}
    report(ra, 1, alice=1)
    ra.placements_seen = {p.placements.id: 1, "another-picker": 40}  # A has seen placement 1, not 3 yet
    p._reported(ra)
    assert p.placements.pending() == {A: 1, B: 1}
    assert p.decide(CONVERSE_PATH, ALICE).status.code == 0  # 1 reported + 3 pending: under no limit here
    clock.t += 10.5  # placements that never reached a replica are forgotten
    assert p.placements.pending() == {}


def test_choose_never_picks_an_unhealthy_or_full_replica() -> None:
    ra, rb = Replica(A, None), Replica(B, None)  # type: ignore[arg-type]
    report(ra, 0, healthy=False)  # draining (or down): however empty
    report(rb, 7)
    assert choose([ra, rb], Counter()) is rb
    assert choose([ra, rb], Counter({B: 1})) is None  # B's last slot was just placed
    report(rb, 8)
    assert choose([ra, rb], Counter()) is None


async def test_allowed_stream_gets_its_replica_and_key_id_set_not_appended(tmp_path: object) -> None:
    p = picker(tmp_path, Clock())
    report(p.router.replicas[0], 5)
    report(p.router.replicas[1], 1)
    answer = p.decide(CONVERSE_PATH, {**ALICE, REPLICA_HEADER: A, KEY_ID_METADATA: "bob"})
    assert answer.status.code == 0
    placement = f"{p.placements.id}.1"
    assert headers(answer) == {REPLICA_HEADER: f"{B},{A}", KEY_ID_METADATA: "alice", PLACEMENT_METADATA: placement}
    for option in answer.ok_response.headers:  # replaces whatever the client sent
        assert option.HasField("append") and not option.append.value
        assert option.append_action == 2  # OVERWRITE_IF_EXISTS_OR_ADD


async def test_a_new_session_lists_the_next_engines_with_room_for_envoy_to_try(tmp_path: object) -> None:
    """``REPLICA_HEADER`` of a new session: the chosen engine, then the other healthy ones with a free slot,
    most free first, ``START_ATTEMPTS`` in all at most: where Envoy starts the stream when the chosen one
    cannot be reached (it died an instant before the picker saw it)."""
    C, D, E = "127.0.0.1:7003", "127.0.0.1:7004", "127.0.0.1:7005"
    p = picker(tmp_path, Clock())
    p.router.set_addresses([A, B, C, D, E])
    ra, rb, rc, rd, re = p.router.replicas
    report(ra, 1)
    report(rb, 8)  # full
    report(rc, 0, healthy=False)  # down or draining
    report(rd, 3)
    report(re, 2)
    assert [r.address for r in ranked(p.router.replicas, Counter())] == [A, E, D]
    answer = p.decide(CONVERSE_PATH, ALICE)
    assert START_ATTEMPTS == 3 and headers(answer)[REPLICA_HEADER] == f"{A},{E},{D}"
    assert p.placements.pending() == {A: 1}  # counted on the first only
    assert sessions_by_key(p.router.replicas, p.placements) == {"alice": 1}
    report(ra, 1, healthy=False)  # A died: Envoy started the session on E, whose next report counts it
    assert sessions_by_key(p.router.replicas, p.placements) == {}  # not twice against alice's quota meanwhile
    report(ra, 1)
    report(re, 7)  # E: one slot left
    report(ra, 7)  # A: 7 + the one placed = full
    assert headers(p.decide(CONVERSE_PATH, ALICE))[REPLICA_HEADER] == f"{D},{E}"
    report(rd, 7)  # D: 7 + the one placed = full
    assert headers(p.decide(CONVERSE_PATH, ALICE))[REPLICA_HEADER] == E  # nothing else has room
    await p.router.close()


async def test_a_realtime_upgrade_lists_the_next_engines_realtime_ports_too(tmp_path: object) -> None:
    """A WebSocket upgrade of ``REALTIME_PATH`` is placed as a gRPC session is: ``REPLICA_HEADER`` lists the chosen
    engine then the next ones with room (``START_ATTEMPTS`` at most), each at the Realtime port it reports;
    an engine that serves no Realtime port is never listed."""
    C, D = "127.0.0.1:7003", "127.0.0.1:7004"
    p = picker(tmp_path, Clock())
    p.router.set_addresses([A, B, C, D])
    ra, rb, rc, rd = p.router.replicas
    for r, active, port in ((ra, 1, 9001), (rb, 0, 0), (rc, 3, 9003), (rd, 2, 9004)):
        report(r, active)
        r.http_port = port
    answer = p.realtime.decide(ALICE)
    assert headers(answer)[REPLICA_HEADER] == "127.0.0.1:9001,127.0.0.1:9004,127.0.0.1:9003"
    assert p.placements.pending() == {A: 1}  # counted on the first only, under its gRPC address
    report(rc, 8)  # full
    report(rd, 8, healthy=False)
    assert headers(p.realtime.decide(ALICE))[REPLICA_HEADER] == "127.0.0.1:9001"
    await p.router.close()


async def test_refusals_carry_the_grpc_status_the_client_gets(tmp_path: object) -> None:
    clock = Clock()
    p = picker(tmp_path, clock, key_max_sessions=2)
    ra, rb = p.router.replicas
    report(ra, 0)
    report(rb, 0)
    missing = p.decide(CONVERSE_PATH, {})
    assert missing.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert headers(missing)["grpc-status"] == "16" and "missing API key" in headers(missing)["grpc-message"]
    assert missing.denied_response.status.code == 401
    wrong = p.decide(CONVERSE_PATH, {"x-api-key": "nope"})
    assert headers(wrong)["grpc-message"] == "invalid API key"
    other = p.decide("/duplex.v1.Replica/GetLoad", ALICE)
    assert other.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    report(ra, 1, alice=1)  # alice holds one session there, and the picker placed another
    assert p.decide(CONVERSE_PATH, ALICE).status.code == 0
    quota = p.decide(CONVERSE_PATH, ALICE)
    assert headers(quota)["grpc-status"] == "8" and "2/2 live sessions" in quota.status.message
    assert int(headers(quota)["retry-after-ms"]) == 1000
    assert p.decide(CONVERSE_PATH, {"authorization": "Bearer secret-b"}).status.code == 0  # bob's own quota
    report(ra, 8)
    report(rb, 8)
    full = p.decide(CONVERSE_PATH, {"authorization": "Bearer secret-b"})
    assert full.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "all engine replicas are full" in (
        full.status.message
    )
    report(ra, 0, healthy=False)
    report(rb, 0, healthy=False)
    down = p.decide(CONVERSE_PATH, {"authorization": "Bearer secret-b"})
    assert headers(down)["grpc-status"] == "14" and down.denied_response.status.code == 503


async def test_a_resume_goes_to_the_replica_holding_its_session(tmp_path: object) -> None:
    p = picker(tmp_path, Clock())
    ra, rb = p.router.replicas
    report(ra, 8)  # full: a resume does not need a new slot
    report(rb, 0)
    answer = p.decide(CONVERSE_PATH, {**ALICE, RESUME_REPLICA_METADATA: A, PLACEMENT_METADATA: "forged.99"})
    assert answer.status.code == 0 and headers(answer)[REPLICA_HEADER] == A
    assert headers(answer)[PLACEMENT_METADATA] == "resume" and not p.placements.pending()  # counted already
    report(ra, 0, healthy=False)
    lost = p.decide(CONVERSE_PATH, {**ALICE, RESUME_REPLICA_METADATA: A})
    assert headers(lost)["grpc-status"] == "14" and headers(lost)[HOLDER_LOST_METADATA[0]] == HOLDER_LOST_METADATA[1]
    unknown = p.decide(CONVERSE_PATH, {**ALICE, RESUME_REPLICA_METADATA: "10.0.0.9:80"})
    assert "not one of this picker's replicas" in unknown.status.message


def test_grpc_message_is_percent_encoded() -> None:
    answer = deny(grpc.StatusCode.UNAUTHENTICATED, "bad key: 100% wrong — try again")
    assert headers(answer)["grpc-message"] == "bad key: 100%25 wrong %E2%80%94 try again"
    assert answer.denied_response.body == "bad key: 100% wrong — try again"


def test_engine_reports_sessions_per_key_and_placements_seen(stack: Stack) -> None:
    """What the picker counts on, from a real engine: ``Replica.GetLoad`` lists live sessions per key id and,
    per picker, the highest placement number that reached it (a malformed value is ignored)."""
    talk = client.split_chunks(tone(4.0), 3200)

    async def scenario() -> tuple[pb.ReplicaLoad, pb.ReplicaLoad]:
        async with grpc.aio.insecure_channel(stack.engine_addr) as ch:
            placed = [("p1.7", "alice"), ("p1.3", "alice"), ("p2.1", "bob"), ("no-number", "bob")]
            live = [
                asyncio.create_task(client.converse(ch, talk, metadata=((PLACEMENT_METADATA, p), (KEY_ID_METADATA, k))))
                for p, k in placed
            ]
            end = time.monotonic() + 30
            while (during := await get_load(ch, 5.0)).active_sessions < len(placed):
                assert time.monotonic() < end, "the sessions never all started"
                await asyncio.sleep(0.02)
            for task in live:
                task.cancel()
            await asyncio.gather(*live, return_exceptions=True)
            end = time.monotonic() + 30
            while (after := await get_load(ch, 5.0)).sessions_by_key:
                assert time.monotonic() < end, "the sessions never ended"
                await asyncio.sleep(0.02)
            return during, after

    during, after = asyncio.run(scenario())
    assert dict(during.sessions_by_key) == {"alice": 2, "bob": 2}
    # the stack's own picker may have placed sessions on this engine in earlier tests: its entry is not asked about
    for load in (during, after):  # after: kept, the highest number seen, not the live ones
        seen = dict(load.placements_seen)
        assert {k: seen.get(k) for k in ("p1", "p2")} == {"p1": 7, "p2": 1}, seen
        assert not [k for k in seen if "no-number" in k], seen  # the malformed value left nothing


async def test_engines_change_at_run_time_a_removed_one_gets_no_new_session(tmp_path: object) -> None:
    """``Router.set_addresses`` (what the engine watch calls): a removed replica is out of placement at once,
    a kept one keeps its report, an added one takes sessions only once its first report says it serves."""
    C = "127.0.0.1:7003"
    p = picker(tmp_path, Clock())
    ra, rb = p.router.replicas
    report(ra, 0)
    report(rb, 6)
    assert picked(p.decide(CONVERSE_PATH, ALICE)) == A
    added, removed = p.router.set_addresses([B, C])
    assert (added, removed) == ([C], [A])
    assert p.router.replicas[0] is rb and p.router.replicas[1].address == C
    rc = p.router.replicas[1]
    assert not rc.healthy  # not polled yet: no session on its word alone
    chosen = [picked(p.decide(CONVERSE_PATH, ALICE)) for _ in range(2)]
    assert chosen == [B, B]  # A had the most free slots, but it is gone
    report(rc, 0)
    assert picked(p.decide(CONVERSE_PATH, ALICE)) == C
    assert p.router.set_addresses([B, C]) == ([], [])
    p.router.set_addresses([])
    answer = p.decide(CONVERSE_PATH, ALICE)
    assert answer.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    await p.router.close()
